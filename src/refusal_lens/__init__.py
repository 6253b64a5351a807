"""refusal-lens: find, ablate and explain refusal in chat language models with SAEs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("refusal-lens")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+src"
