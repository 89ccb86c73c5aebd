"""``featviz models check``: load a model, run it once, and say what looks wrong.

A network fed the wrong value range, or with weights that did not load,
still runs; it only predicts nonsense. The check runs the photos that ship
with scikit-image and looks for the signs: outputs that are not finite, every
photo getting the same class, near-uniform probabilities, and, for an ImageNet
classifier, a cat photo without a cat class (or a cup of coffee without a cup)
among the top five.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .organism import LayerInfo, ModelOrganism

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
# ImageNet classes a working classifier ranks in its top 5 for two of the photos.
IMAGENET_EXPECTED = {"chelsea": (range(281, 288), "a cat"), "coffee": ((504, 967, 968), "a cup or espresso")}


@dataclass
class CheckReport:
    """What ``check_model`` found: the layer table, the predictions and any problems."""

    organism: ModelOrganism
    layers: list[LayerInfo]
    output_shape: tuple
    predictions: dict[str, list[tuple[int, str, float]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _photo(name: str) -> Image.Image:
    from skimage import data

    arr = getattr(data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    return Image.fromarray(arr[..., :3])


def check_model(organism: ModelOrganism, photos=PHOTOS, k: int = 3) -> CheckReport:
    """One forward pass on ``photos`` (scikit-image names), the layer table, and the problems seen."""
    layers = organism.layers()
    x = torch.stack([organism.preprocess(_photo(name)) for name in photos]).to(organism.device)
    with torch.no_grad():
        out = organism(x)
    report = CheckReport(organism, layers, tuple(out.shape))
    if not torch.isfinite(out).all():
        report.problems.append("the output has NaN or infinite values: the weights are broken, or mean/std are "
                               "far off")
        return report
    if out.dim() != 2:
        report.notes.append(f"the output has shape {list(out.shape[1:])} per image, not class scores: "
                            "logit/prob objectives and class predictions do not apply")
        return report
    n_classes = out.shape[1]
    if organism.labels is None:
        report.notes.append(f"no labels: the {n_classes} classes are shown by number (add labels = \"labels.txt\")")
    kk = min(k, n_classes)
    probs = out.float().softmax(-1)
    for name, row in zip(photos, probs):
        top = row.topk(kk)
        report.predictions[name] = [(int(i), organism.label(int(i)), float(p)) for p, i in zip(top.values, top.indices)]
    if n_classes < 2:
        return report
    tops = {p[0][0] for p in report.predictions.values()}
    if len(photos) > 2 and len(tops) == 1:
        report.problems.append(f"every photo gets the same top class ({organism.label(tops.pop())}): the weights may "
                               "not have loaded, or mean/std may not be what the network was trained with")
    spread = float(probs.max(-1).values.mean())
    if spread < 2.0 / n_classes:
        report.problems.append(f"the predictions are nearly uniform (mean top probability {spread:.1%} for "
                               f"{n_classes} classes): random or broken weights?")
    if n_classes == 1000:
        top5 = {name: set(row.topk(5).indices.tolist()) for name, row in zip(photos, probs)}
        missed = [f"{name} ({what})" for name, (wanted, what) in IMAGENET_EXPECTED.items()
                  if name in top5 and not top5[name] & set(wanted)]
        if len(missed) == len([n for n in IMAGENET_EXPECTED if n in top5]) and missed:
            report.problems.append(f"an ImageNet classifier should see {' and '.join(missed)} in its top 5 and does "
                                   "not: check mean/std and the weights")
    return report
