"""The report: a self-contained HTML page and Markdown drawn from a benchmark run folder."""

from .render import PAPER_TABLE, build_report, write_report

__all__ = ["PAPER_TABLE", "build_report", "write_report"]
