"""Running top-k / bottom-k per unit, with a deterministic tie-break.

For one layer with C units the state of one ranking is three (C, k) tensors:
``values``, ``index`` (the image index in the store's sorted file list) and
``pos`` (flattened spatial position of the maximum, or -1). A batch is merged
by concatenating the current best with the batch's values and keeping the
first k after sorting by value (descending for a top ranking, ascending for a
bottom one), ties broken by the smaller image index. Memory is C x k whatever
the number of images, and the order is a total order, so the result does not
depend on how the images were split into batches, runs or shards.

Empty slots hold +-inf and index ``EMPTY``; they sort after every real image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

EMPTY = 2**62  # index of an empty slot: larger than any real image index

# (name, descending, keeps the position of the maximum)
RANKINGS = (("top", True), ("bottom", False), ("max", True))


def rank(values: torch.Tensor, index: torch.Tensor, pos: torch.Tensor, k: int, descending: bool):
    """Keep the first ``k`` columns of each row by (value, then smaller index).

    ``values``/``index``/``pos``: (C, M). Two stable sorts: by index, then by value.
    NaN counts as the worst value.
    """
    bad = float("-inf") if descending else float("inf")
    values = torch.nan_to_num(values, nan=bad, posinf=float("inf"), neginf=float("-inf"))
    order = torch.argsort(index, dim=1, stable=True)
    values, index, pos = values.gather(1, order), index.gather(1, order), pos.gather(1, order)
    order = torch.argsort(values, dim=1, descending=descending, stable=True)[:, :k]
    return values.gather(1, order), index.gather(1, order), pos.gather(1, order)


@dataclass
class Ranking:
    """One ranking (top, bottom or max) of all units of one layer."""

    values: torch.Tensor  # (C, k) float32
    index: torch.Tensor  # (C, k) int64
    pos: torch.Tensor  # (C, k) int64, -1 where unused
    descending: bool

    @classmethod
    def empty(cls, channels: int, k: int, descending: bool, device=None) -> "Ranking":
        fill = float("-inf") if descending else float("inf")
        return cls(torch.full((channels, k), fill, dtype=torch.float32, device=device),
                   torch.full((channels, k), EMPTY, dtype=torch.int64, device=device),
                   torch.full((channels, k), -1, dtype=torch.int64, device=device), descending)

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def update(self, values: torch.Tensor, index: torch.Tensor, pos: torch.Tensor | None = None) -> "Ranking":
        """A new ranking with a batch merged in: ``values`` (B, C), ``index`` (B,), ``pos`` (B, C)."""
        c = self.values.shape[0]
        v = torch.cat([self.values, values.t().float()], dim=1)
        i = torch.cat([self.index, index.view(1, -1).expand(c, -1)], dim=1)
        p = torch.cat([self.pos, pos.t() if pos is not None else torch.full_like(values.t(), -1, dtype=torch.int64)],
                      dim=1)
        return Ranking(*rank(v, i, p, self.k, self.descending), self.descending)

    def merged(self, other: "Ranking") -> "Ranking":
        """Two rankings of disjoint image sets (same index numbering) -> the ranking of both."""
        v = torch.cat([self.values, other.values], dim=1)
        i = torch.cat([self.index, other.index], dim=1)
        p = torch.cat([self.pos, other.pos], dim=1)
        return Ranking(*rank(v, i, p, self.k, self.descending), self.descending)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.index, self.pos))


class LayerState:
    """The three rankings of one layer: top and bottom by channel mean, top by spatial max."""

    def __init__(self, rankings: dict[str, Ranking]):
        self.rankings = rankings

    @classmethod
    def empty(cls, channels: int, top: int, bottom: int, device=None) -> "LayerState":
        return cls({"top": Ranking.empty(channels, top, True, device),
                    "bottom": Ranking.empty(channels, bottom, False, device),
                    "max": Ranking.empty(channels, top, True, device)})

    def update(self, act: torch.Tensor, index: torch.Tensor, rows: torch.Tensor | None = None) -> "LayerState":
        """Merge a batch of activations (B, C, H, W) or (B, C): rows ``rows`` (default all) are
        images ``index``. Statistics are computed on the whole batch, then the rows taken, so
        their numerics never depend on how many rows hold images."""
        mean, peak, where = unit_stats(act)
        if rows is not None:
            mean, peak, where = mean[rows], peak[rows], where[rows]
        return LayerState({"top": self.rankings["top"].update(mean, index),
                           "bottom": self.rankings["bottom"].update(mean, index),
                           "max": self.rankings["max"].update(peak, index, where)})

    def nbytes(self) -> int:
        return sum(r.nbytes() for r in self.rankings.values())


def unit_stats(act: torch.Tensor):
    """Per image and unit: spatial mean, spatial max and the flat position of the (first) max."""
    act = act.float()
    if act.dim() == 2:
        return act, act, torch.zeros_like(act, dtype=torch.int64)
    mean = act.mean(dim=(2, 3))
    peak, where = act.flatten(2).max(dim=2)
    return mean, peak, where
