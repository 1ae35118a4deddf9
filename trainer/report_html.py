"""The diagnosis report as one self-contained HTML page (report.html beside report.md).

Renders the blocks trainer/report.py builds (trainer/report_doc.py) with inline CSS only:
every plot is embedded as a ``data:image/png`` URI, and a Content-Security-Policy forbids
fetching anything, so the page works offline and from a copied file. Cells where ours loses
to a baseline are red, the baseline figures that beat ours amber, gate verdicts green/red.
A small inline script records, on load, how many images failed to decode
(``data-broken-images`` on ``<body>``; the tests read it from a headless browser).
All text goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import html
import os
import re
from datetime import datetime, timezone

from serving.fileio import gfile, read_bytes, write_text
from trainer.report_doc import BAD, BEATS, GOOD, LOSS, Block, Bullets, Cell, Heading, Image, Table, Text, text_of

HTML_FILE = "report.html"

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em auto;
       max-width: 78em; padding: 0 1em; color: #1b1b1b; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .9em; }
th, td { border: 1px solid #d0d0d0; padding: .25em .6em; vertical-align: top; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.loss, span.loss { background: #f8d0d0; color: #8a0000; font-weight: 600; }
li.loss { color: #8a0000; font-weight: 600; }
td.beats, span.beats { background: #fff0c2; }
td.good { background: #d6f0d6; color: #0a5a0a; font-weight: 600; }
td.bad { background: #f8d0d0; color: #8a0000; font-weight: 600; }
table.meta td, table.meta th { border: none; padding: .1em .8em .1em 0; background: none; }
code { font-size: .9em; background: #f4f4f4; padding: 0 .2em; word-break: break-all; }
img { max-width: 100%; border: 1px solid #e0e0e0; }
figure { margin: .8em 0 1.2em; } figcaption { font-size: .88em; color: #333; max-width: 60em; }
figcaption p { margin: .3em 0; }
.legend { font-size: .9em; color: #444; }
.legend span { padding: 0 .3em; }
"""

# Counts the images that did not load (naturalWidth 0) once the page has loaded.
IMAGE_CHECK_SCRIPT = """window.addEventListener("load", function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++; }
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken-images", String(broken));
});"""

_NUMBER = re.compile(r"^-?(\d[\d,]*(\.\d+)?(e[-+]?\d+)?%?|n/a|nan)$")
_CLASSES = {LOSS: LOSS, BEATS: BEATS, GOOD: GOOD, BAD: BAD}


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _td(cell: Cell) -> str:
    classes = [c for c in (_CLASSES.get(cell.mark, ""), "num" if _NUMBER.match(cell.text) else "") if c]
    attrs = (f' class="{" ".join(classes)}"' if classes else "") + (f' colspan="{cell.span}"' if cell.span > 1 else "")
    title = {LOSS: ' title="ours loses to a baseline here"', BEATS: ' title="beats ours"'}.get(cell.mark, "")
    return f"<td{attrs}{title}>" + "<br>".join(_e(line) for line in cell.text.split("\n")) + "</td>"


def _table(t: Table) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in t.header) + "</tr>"
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in t.rows)
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def _image(b: Image) -> str:
    caption = ("<figcaption>" + "".join(f"<p>{_e(line)}</p>" for line in b.caption) + "</figcaption>"
               if b.caption else "")
    if not gfile.exists(b.path) or gfile.isdir(b.path):
        return f'<figure><p class="legend">plot missing: <code>{_e(b.path)}</code></p>{caption}</figure>'
    data = base64.b64encode(read_bytes(b.path)).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(b.alt)}">{caption}</figure>'


def _block(b: Block) -> str:
    if isinstance(b, Heading):
        level = min(max(b.level, 1), 6)
        return f"<h{level}>{_e(b.text)}</h{level}>"
    if isinstance(b, Text):
        return f"<p>{_e(b.text)}" + (f" <code>{_e(b.code)}</code>" if b.code is not None else "") + "</p>"
    if isinstance(b, Bullets):
        items = "".join((f'<li class="{_CLASSES[i.mark]}">' if isinstance(i, Cell) and i.mark in _CLASSES else "<li>")
                        + _e(text_of(i)) + "</li>" for i in b.items)
        return f"<ul>{items}</ul>"
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Image):
        return _image(b)
    raise TypeError(f"not a report block: {b!r}")


def _losses(blocks: list[Block]) -> int:
    return sum(c.mark == LOSS for b in blocks if isinstance(b, Table) for row in b.rows for c in row)


def render(blocks: list[Block], title: str, meta: list[tuple[str, str | None]], generated: str | None = None) -> str:
    """The page: a header (title, paths, generation time, legend) and the blocks."""
    generated = generated or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in meta if v)
    losses = _losses(blocks)
    legend = (f'<p class="legend"><span class="loss">red</span> ours loses to a baseline on that figure '
              f'({losses} in all); <span class="beats">amber</span> the baseline figure that beats ours.</p>')
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>", f"<style>{CSS}</style>", f"<script>{IMAGE_CHECK_SCRIPT}</script>",
        "</head><body>", f"<header><h1>{_e(title)}</h1>",
        f'<table class="meta">{rows}<tr><th>generated</th><td>{_e(generated)}</td></tr></table>', legend,
        "</header><main>", *(_block(b) for b in blocks), "</main></body></html>", ""])


def write_html(out_dir: str, blocks: list[Block], title: str, meta: list[tuple[str, str | None]]) -> str:
    """``out_dir``/report.html; returns its path."""
    path = os.path.join(out_dir, HTML_FILE)
    write_text(path, render(blocks, title, meta))  # tf.io.gfile writes str as UTF-8
    return path
