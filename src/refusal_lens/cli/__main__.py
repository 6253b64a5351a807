"""`python -m refusal_lens.cli ...`, the same as `refusal-lens ...`."""

import sys

from . import main

sys.exit(main())
