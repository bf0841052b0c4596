"""Self-contained HTML pages: sections of text, tables, figures and image grids.

The one HTML builder of the project: `her2 report` (evaluations, comparisons, demo folders),
the registration review and the demo report all write their pages with it:

    rep = Report("HER2 evaluation")
    sec = rep.section("Set metrics")
    sec.table(rows_or_dataframe); sec.figure("fig.png"); sec.html("<p>...</p>")
    sec.image_grid([[he, virtual, real], ...], columns=["H&E", "virtual", "real"], captions=[...])
    rep.write("report.html")

Images (PNG files, matplotlib figures or RGB uint8 arrays) are embedded as base64,
so the page is one file that opens anywhere. Text is escaped; `html()` takes trusted markup.
"""

from __future__ import annotations

import base64
import html as _html
import io
import json
from pathlib import Path

import numpy as np

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td.t{text-align:left}img{max-width:100%}.grid td{text-align:center;border:none}
.grid img{width:192px;image-rendering:auto}.note{color:#666;font-size:13px}h2{border-bottom:1px solid #ddd}"""


def png_data_uri(img, max_side: int | None = None) -> str:
    """data: URI of a PNG path, bytes, matplotlib figure or RGB uint8 array."""
    if isinstance(img, (str, Path)):
        data = Path(img).read_bytes()
    elif isinstance(img, bytes):
        data = img
    elif hasattr(img, "savefig"):
        buf = io.BytesIO()
        img.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        data = buf.getvalue()
    else:
        from PIL import Image

        im = Image.fromarray(np.asarray(img, dtype=np.uint8))
        if max_side and max(im.size) > max_side:
            im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return ""
    return str(v)


class Section:
    """One titled part of a report; blocks are appended in order."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[str] = []

    def html(self, fragment: str) -> Section:
        self.blocks.append(fragment)
        return self

    def text(self, text: str, note: bool = False) -> Section:
        cls = ' class="note"' if note else ""
        return self.html(f"<p{cls}>{_html.escape(text)}</p>")

    def table(self, rows, columns: list[str] | None = None) -> Section:
        """rows: a pandas DataFrame, a list of dicts or a dict (two columns)."""
        if hasattr(rows, "to_dict"):
            columns = columns or [str(c) for c in rows.columns]
            rows = rows.to_dict("records")
        elif isinstance(rows, dict):
            rows = [{"setting": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                    for k, v in rows.items()]
        rows = list(rows)
        columns = columns or list(dict.fromkeys(k for r in rows for k in r))
        head = "".join(f"<th>{_html.escape(str(c))}</th>" for c in columns)
        body = []
        for r in rows:
            cells = []
            for c in columns:
                v = r.get(c)
                cls = ' class="t"' if not isinstance(v, (int, float)) else ""
                cells.append(f"<td{cls}>{_html.escape(_fmt(v))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return self.html(f"<table><tr>{head}</tr>{''.join(body)}</table>")

    def figure(self, img, caption: str | None = None) -> Section:
        cap = f"<figcaption>{_html.escape(caption)}</figcaption>" if caption else ""
        return self.html(f'<figure><img src="{png_data_uri(img)}">{cap}</figure>')

    def image_grid(self, rows, columns: list[str] | None = None, captions: list[str] | None = None,
                   max_side: int = 256) -> Section:
        """rows: list of lists of images (path or RGB array); one caption per row."""
        head = ("<tr><th></th>" + "".join(f"<th>{_html.escape(c)}</th>" for c in columns) + "</tr>"
                if columns else "")
        body = []
        for i, row in enumerate(rows):
            cap = _html.escape(captions[i]) if captions else ""
            cells = "".join(
                f'<td><img src="{png_data_uri(_load(im), max_side)}"></td>' if im is not None
                else "<td>(missing)</td>" for im in row)
            body.append(f'<tr><td class="t">{cap}</td>{cells}</tr>')
        return self.html(f'<table class="grid">{head}{"".join(body)}</table>')

    def render(self) -> str:
        return f"<section><h2>{_html.escape(self.title)}</h2>{''.join(self.blocks)}</section>"


def _load(im):
    if isinstance(im, (str, Path)):
        from PIL import Image

        with Image.open(im) as f:
            return np.asarray(f.convert("RGB"))
    return im


class Report:
    """An HTML page made of sections."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[Section] = []

    def section(self, title: str) -> Section:
        s = Section(title)
        self.sections.append(s)
        return s

    def to_html(self) -> str:
        t = _html.escape(self.title)
        body = "".join(s.render() for s in self.sections)
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{t}</title>"
                f"<style>{_CSS}</style></head><body><h1>{t}</h1>{body}</body></html>\n")

    def write(self, path) -> Path:
        from her2core.util.atomic import write_text

        write_text(path, self.to_html())
        return Path(path)
