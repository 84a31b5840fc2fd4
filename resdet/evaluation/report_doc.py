"""A report document written twice from one description: Markdown (pictures linked) and a
self-contained HTML page (pictures inlined as base64 PNG)."""

from __future__ import annotations

import base64
import html
import os
from typing import List, Sequence, Tuple

__all__ = ["ReportDoc"]

_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1em}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}img{max-width:100%}"
)


class ReportDoc:
    """Headings, paragraphs, tables and pictures, in order; rendered by :meth:`markdown` and
    :meth:`html` (plain text everywhere: nothing is interpreted as markup)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: List[Tuple[str, object]] = []

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.blocks.append(
            ("table", ([str(h) for h in header], [[str(c) for c in r] for r in rows]))
        )

    def image(self, file_name: str, alt: str) -> None:
        """A PNG in the report's folder, by its file name."""
        self.blocks.append(("img", (file_name, alt)))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h2":
                out += [f"## {value}", ""]
            elif kind == "p":
                out += [str(value), ""]
            elif kind == "table":
                header, rows = value  # type: ignore[misc]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("")
            else:
                file_name, alt = value  # type: ignore[misc]
                out += [f"![{alt}]({file_name})", ""]
        return "\n".join(out)

    def html(self, folder: str) -> str:
        """The page, with every picture read from ``folder`` and inlined."""
        esc = html.escape
        out = [
            "<!DOCTYPE html>",
            '<html><head><meta charset="utf-8">',
            f"<title>{esc(self.title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        for kind, value in self.blocks:
            if kind == "h2":
                out.append(f"<h2>{esc(str(value))}</h2>")
            elif kind == "p":
                out.append(f"<p>{esc(str(value))}</p>")
            elif kind == "table":
                header, rows = value  # type: ignore[misc]
                out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</table>")
            else:
                file_name, alt = value  # type: ignore[misc]
                with open(os.path.join(folder, file_name), "rb") as f:
                    data = base64.b64encode(f.read()).decode("ascii")
                out.append(f'<p><img alt="{esc(alt)}" src="data:image/png;base64,{data}"></p>')
        out.append("</body></html>")
        return "\n".join(out) + "\n"
