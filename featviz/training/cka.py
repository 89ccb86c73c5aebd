"""Linear CKA (centered kernel alignment; Kornblith et al. 2019): how similar two representations of
the same images are, invariant to rotations and isotropic scaling of either, 1 for the same.

Computed from the (N x N) Gram matrices of the flattened activations, so a layer
of any width costs N^2 memory, and each network's Grams are computed once per
probe set: ``gram(features)`` then ``linear_cka_from_grams(K, L)``.
"""
from __future__ import annotations

from typing import Sequence

import torch


def gram(features: torch.Tensor) -> torch.Tensor:
    """Centered linear Gram matrix (N, N) float64 of (N, ...) features (flattened per image)."""
    x = features.reshape(features.shape[0], -1).double()
    x = x - x.mean(0, keepdim=True)  # centring the features centres the Gram (H K H)
    return x @ x.T


def linear_cka_from_grams(k: torch.Tensor, l: torch.Tensor) -> float:
    """<K, L>_F / (||K||_F ||L||_F) of two centered Gram matrices."""
    denominator = float(k.norm() * l.norm())
    return float((k * l).sum()) / denominator if denominator > 0 else float("nan")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations (N, ...) of the same N images."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same images in both: {x.shape[0]} vs {y.shape[0]}")
    return linear_cka_from_grams(gram(x), gram(y))


@torch.no_grad()
def layer_grams(model, images: torch.Tensor, layers: Sequence[str], batch_size: int = 32) -> dict[str, torch.Tensor]:
    """layer -> centered Gram matrix of its flattened outputs on ``images`` (a model organism).
    Holds the probe set's activations of these layers (N x their sizes, float32) once."""
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for i in range(0, images.shape[0], batch_size):
        acts = model.activations(images[i:i + batch_size].to(model.device), layers)
        for name in layers:
            feats[name].append(acts[name].detach().float().reshape(acts[name].shape[0], -1).cpu())
    return {name: gram(torch.cat(parts)) for name, parts in feats.items()}


def label_cka_axes(ax, layers: Sequence[str]) -> None:
    """The axes of a CKA-by-depth plot: main layers from input to output along x, CKA in [0, 1] up."""
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("main layer (input to output)")
    ax.set_ylabel("linear CKA to the starting network")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
