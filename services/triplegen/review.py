"""Review sheet: ~24 random triples as an HTML page and a PNG contact sheet (query | instruction
| target), so a person can judge the instructions at a glance."""

from __future__ import annotations

import html
import io
import random
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from runtime import db
from runtime.blobstore import open_blobstore
from services.triplegen import store
from services.triplegen.annotate import decode_image

THUMB = 160
TEXT_W = 420
ROW_H = THUMB + 16
FONT_PATHS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
              "/usr/share/fonts/dejavu/DejaVuSans.ttf")


def _font(size: int) -> ImageFont.ImageFont:
    for p in FONT_PATHS:
        if Path(p).exists():
            return ImageFont.truetype(p, size)
    return ImageFont.load_default()


def _thumb(data: bytes) -> Image.Image:
    try:
        im = decode_image(data)
    except (OSError, ValueError):
        im = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
    im.thumbnail((THUMB, THUMB))
    canvas = Image.new("RGB", (THUMB, THUMB), "white")
    canvas.paste(im, ((THUMB - im.width) // 2, (THUMB - im.height) // 2))
    return canvas


def render(database_url: str, blob_root: str, out_dir: Path, n: int = 24, seed: int = 0) -> dict:
    blobs = open_blobstore(blob_root)
    with db.connect(database_url) as conn:
        rows = store.review_rows(conn)
    rows = random.Random(seed).sample(rows, min(n, len(rows)))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "img").mkdir(exist_ok=True)
    sheet = Image.new("RGB", (THUMB * 2 + TEXT_W + 32, max(1, len(rows)) * ROW_H + 8), "white")
    draw = ImageDraw.Draw(sheet)
    big, small = _font(17), _font(12)
    cells = []
    for i, r in enumerate(rows):
        y = 8 + i * ROW_H
        q, t = _thumb(blobs.get(r["q"])), _thumb(blobs.get(r["t"]))
        sheet.paste(q, (8, y))
        sheet.paste(t, (THUMB + TEXT_W + 24, y))
        ty = y + 6
        for line in textwrap.wrap(r["instruction"], 40)[:5]:
            draw.text((THUMB + 16, ty), line, fill="black", font=big)
            ty += 22
        meta = f"[{r['relation']}] {r['writer']}  Q: {r['qalt'] or ''}  T: {r['talt'] or ''}"
        for line in textwrap.wrap(meta, 62)[:3]:
            draw.text((THUMB + 16, ty + 4), line, fill=(110, 110, 110), font=small)
            ty += 15
        draw.line((0, y + ROW_H - 4, sheet.width, y + ROW_H - 4), fill=(220, 220, 220))
        for side, im in (("q", q), ("t", t)):
            buf = io.BytesIO()
            im.save(buf, "PNG")
            (out_dir / "img" / f"{r['triple_id']}_{side}.png").write_bytes(buf.getvalue())
        cells.append(
            f"<tr><td><img src='img/{r['triple_id']}_q.png'></td><td><b>"
            f"{html.escape(r['instruction'])}</b><br><small>{html.escape(r['relation'] or '')}"
            f" · {html.escape(r['page'] or '')}<br>Q: {html.escape(r['qalt'] or '')} · T: "
            f"{html.escape(r['talt'] or '')}</small></td>"
            f"<td><img src='img/{r['triple_id']}_t.png'></td></tr>")
    sheet.save(out_dir / "triples.png")
    (out_dir / "triples.html").write_text(
        "<!DOCTYPE html><meta charset='utf-8'><title>Triple review</title>"
        "<style>body{font-family:sans-serif}td{padding:6px;vertical-align:middle;"
        "border-bottom:1px solid #ddd}</style><h1>Random triples (query | instruction | "
        f"target)</h1><table>{''.join(cells)}</table>")
    return {"rows": len(rows), "png": str(out_dir / "triples.png"),
            "html": str(out_dir / "triples.html")}
