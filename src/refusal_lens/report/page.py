"""A report page: Markdown and HTML built side by side."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence


class Page:
    """Markdown and HTML built side by side, so the two always say the same thing."""

    def __init__(self, title: str) -> None:
        self.md: list[str] = [f"# {title}", ""]
        self.html: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.figures: dict[str, bytes] = {}

    def heading(self, text: str) -> None:
        self.md += [f"## {text}", ""]
        self.html.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.md.append("| " + " | ".join(header) + " |")
        self.md.append("|" + "---|" * len(header))
        self.md += ["| " + " | ".join(row) + " |" for row in rows]
        self.md.append("")
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
        )
        self.html.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, name: str, png: bytes, caption: str) -> None:
        if name in self.figures:
            raise ValueError(f"two report figures are named {name}")
        self.figures[name] = png
        self.md += [f"![{caption}](figures/{name})", ""]
        data = base64.b64encode(png).decode()
        self.html.append(
            f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def raw_html(self, fragment: str, markdown: str) -> None:
        self.html.append(fragment)
        self.md += [markdown, ""]
