"""An HTML report readable from disk without a server: pictures inlined and compressed, animations beside it.

Still pictures (PNG) are inlined, re-encoded to the smaller of a JPEG
(quality 85) and a 256-colour PNG, so a report of a dozen X-rays stays near a
megabyte and can be mailed on its own.  Animations (GIF, about a megabyte
each) are not inlined: the report shows them from their files, by a path
relative to the report (``cases/000/registration.gif``), so they appear when
the report is opened in its folder.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from xraypose.io import atomic_write_bytes

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.summary{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.card{background:#f4f6f8;border-radius:8px;padding:.7em 1.1em;min-width:10em}
.card .v{font-size:1.5em;font-weight:600} .card .k{color:#555;font-size:.85em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f6f8} td:first-child,th:first-child{text-align:left}
.ok{color:#11772e;font-weight:600} .bad{color:#b3261e;font-weight:600} .uncertain{color:#9a6700;font-weight:600}
figure{display:inline-block;margin:.4em;vertical-align:top} figcaption{font-size:.8em;color:#555;max-width:480px}
img{max-width:100%;border:1px solid #eee} .note{color:#555;font-size:.85em} pre{background:#f4f6f8;padding:.6em;overflow:auto}
"""


_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".svg": "image/svg+xml"}
JPEG_QUALITY = 85


def compact_image(path) -> tuple[bytes, str]:
    """(bytes, mime) of a picture to inline: a PNG re-encoded to the smaller of a JPEG (quality
    85, on white) and a 256-colour PNG; other formats (and unreadable PNGs) as they are."""
    path = Path(path)
    data = path.read_bytes()
    mime = _MIME.get(path.suffix.lower(), "image/png")
    if path.suffix.lower() != ".png":
        return data, mime
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                rgba = im.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.getchannel("A"))
            else:
                rgb = im.convert("RGB")
        jpg, pal = io.BytesIO(), io.BytesIO()
        rgb.save(jpg, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        rgb.quantize(256).save(pal, format="PNG", optimize=True)
    except Exception:  # noqa: BLE001 - a picture that PIL cannot re-encode is inlined as it is
        return data, mime
    best = min((data, mime), (jpg.getvalue(), "image/jpeg"), (pal.getvalue(), "image/png"), key=lambda x: len(x[0]))
    return best


def _img_tag(path: Path, alt: str, base: Path | None = None) -> str:
    path = Path(path)
    if path.suffix.lower() == ".gif" and base is not None:  # animations: shown from their file
        rel = Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
        return f'<img alt="{html.escape(alt)}" loading="lazy" src="{html.escape(rel)}">'
    data, mime = compact_image(path)
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return html.escape(str(v))


#: CSS class of a registration verdict's cell (a "verdict" column is coloured by its value).
VERDICT_CLASS = {"ok": "ok", "uncertain": "uncertain", "failed": "bad"}


def table_html(rows: list[dict], columns: list[str] | None = None, good=None) -> str:
    """An HTML table of dict rows; ``good(row) -> bool | None`` colours the first column, and a
    ``"verdict"`` column is coloured by its value (ok green, uncertain amber, failed red)."""
    if not rows:
        return "<p class=note>(no rows)</p>"
    columns = columns or list(rows[0].keys())
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"]
    for r in rows:
        cls = ""
        if good is not None:
            g = good(r)
            cls = "" if g is None else (' class="ok"' if g else ' class="bad"')
        cells = [f"<td{cls if i == 0 else _verdict_class(r.get(c)) if c == 'verdict' else ''}>{_fmt(r.get(c, ''))}</td>"
                 for i, c in enumerate(columns)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _verdict_class(v) -> str:
    return f' class="{VERDICT_CLASS[v]}"' if v in VERDICT_CLASS else ""


def write_report(path, title: str, summary: dict, sections: list[dict], subtitle: str = "") -> Path:
    """Write the report (pictures inlined, GIF animations shown from their files: see the module).

    Args:
        summary: {label: value} shown as cards at the top.
        sections: [{"heading": str, "text": str (HTML allowed), "table": html str,
                    "figures": [(path, caption)]}] in order.
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f"<p class=note>{subtitle}</p>")
    parts.append("<div class=summary>")
    for k, v in summary.items():
        parts.append(f"<div class=card><div class=v>{_fmt(v)}</div><div class=k>{html.escape(k)}</div></div>")
    parts.append("</div>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s['heading'])}</h2>")
        if s.get("text"):
            parts.append(f"<p>{s['text']}</p>")
        if s.get("table"):
            parts.append(s["table"])
        for fig in s.get("figures", []):
            p, cap = fig
            if p is not None and Path(p).exists():
                tag = _img_tag(Path(p), cap, base=Path(path).parent)
                if Path(p).suffix.lower() == ".gif":
                    rel = Path(os.path.relpath(Path(p).resolve(), Path(path).parent.resolve())).as_posix()
                    cap = f"{cap} (animation: {rel}, beside the report)"
                parts.append(f"<figure>{tag}<figcaption>{html.escape(cap)}</figcaption></figure>")
    parts.append("</body></html>")
    atomic_write_bytes(path, "\n".join(parts).encode())
    return Path(path)
