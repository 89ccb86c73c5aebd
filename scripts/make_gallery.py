"""Regenerate the README gallery (docs/gallery/*.png) with the default settings.

    python scripts/make_gallery.py

Each PNG records the settings that made it in its metadata (featviz.imageio.read_settings).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import featviz  # noqa: E402
from featviz.imageio import grid, save_png  # noqa: E402
from featviz.optvis import objectives as O  # noqa: E402

out = ROOT / "docs" / "gallery"
out.mkdir(parents=True, exist_ok=True)
model = featviz.load("efficientnet_lite0")

classes = {309: "bee", 9: "ostrich", 980: "volcano", 430: "basketball"}
images = []
for cls in classes:
    res = featviz.render(model, f"logit:{cls}", size=224, seed=0)
    images.append(res.pil().resize((160, 160)))
save_png(grid(images, columns=4, labels=[f"logit:{c} {n}" for c, n in classes.items()]), out / "classes.png",
         {"what": "class logits, default recipe, 224 px, seed 0, shown at 160 px"})

units = [("blocks.2", 9), ("blocks.5", 20), ("blocks.8", 42), ("blocks.11", 60), ("blocks.14", 168), ("head", 254)]
results = featviz.render_units(model, units, batch_size=len(units), size=128, seed=0)
save_png(grid([r.pil() for r in results], columns=6, labels=[f"{l}:{c}" for l, c in units]), out / "channels.png",
         {"what": "channel objectives along the depth, default recipe, 128 px, seed 0"})

div = featviz.render(model, O.channel("blocks.14", 168) + 0.5 * O.diversity("blocks.14"), batch=4, size=128, seed=0)
save_png(div.sheet(columns=4, labels=["diversity"] * 4), out / "diversity.png", div.settings)
