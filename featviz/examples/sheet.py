"""A side-by-side sheet for one unit: optimized visualization next to its dataset examples.

Rows: top examples by mean activation (whole images), top examples by
maximum activation (receptive-field crops, the neuron view) and bottom
examples by mean activation, each captioned with its activation. The
visualization, if given, stands on the left at the height of the rows.
"""
from __future__ import annotations

from PIL import Image, ImageDraw

from .store import ExampleStore

PAD = 4
LABEL_H = 14
CAPTION_H = 12


def unit_sheet(store: ExampleStore, layer: str, unit: int, vis: Image.Image | None = None, k: int | None = None,
               tile: int = 96, title: str | None = None, vis_label: str = "optimized visualization") -> Image.Image:
    """The sheet of ``unit`` of ``layer`` from ``store`` (``vis``: a PIL image or None)."""
    rows = [("top by mean activation", store.top(layer, unit, k=k)),
            ("top by max activation (receptive-field crops)", store.top(layer, unit, by="max", k=k)),
            ("bottom by mean activation", store.bottom(layer, unit, k=k))]
    rows = [(label, exs) for label, exs in rows if exs]
    ncols = max(len(exs) for _, exs in rows)
    row_h = LABEL_H + tile + CAPTION_H + PAD
    title_h = LABEL_H + PAD
    body_h = len(rows) * row_h
    vis_side = 0
    if vis is not None:
        vis_side = body_h - LABEL_H - PAD
    left = PAD + (vis_side + 2 * PAD if vis is not None else 0)
    width = left + ncols * (tile + PAD)
    height = title_h + body_h + PAD
    sheet = Image.new("RGB", (max(width, 320), height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    s = store.settings
    info = store.layer(layer)
    draw.text((PAD, PAD), title or f"{s['model']}  {layer}:{unit}  ({info.channels} units, "
                                   f"{store.num_images} images)", fill=(0, 0, 0))
    if vis is not None:
        draw.text((PAD, title_h), vis_label, fill=(60, 60, 60))
        sheet.paste(vis.convert("RGB").resize((vis_side, vis_side), Image.BICUBIC), (PAD, title_h + LABEL_H))
    y = title_h
    for label, examples in rows:
        draw.text((left, y), label, fill=(60, 60, 60))
        for i, ex in enumerate(examples):
            x = left + i * (tile + PAD)
            sheet.paste(ex.open().resize((tile, tile), Image.BICUBIC), (x, y + LABEL_H))
            draw.text((x + 1, y + LABEL_H + tile), f"{ex.value:.3g}", fill=(0, 0, 0))
        y += row_h
    return sheet
