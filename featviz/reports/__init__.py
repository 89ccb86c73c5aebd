"""Reports: experiments that check a claim of feature visualization on a real model.

Each report renders, measures, and writes matplotlib PNGs, a Markdown page
(``report.md``) stating its settings, and ``results.json`` with every figure.

- ``logits_report``: optimizing the class logit vs the softmax probability.
- ``causes_report``: a unit's visualization vs its dataset examples, with an
  ablation (mask the attributed region vs a random region of the same size).
- ``transfer_report``: linear probes along the depth on a task the network was
  not trained on, trained network vs a randomly initialised copy.
"""
from .causes import causes_report
from .logits import DEFAULT_CLASSES, logits_report
from .transfer import Pictures, ProbeSettings, transfer_report

__all__ = ["logits_report", "causes_report", "transfer_report", "ProbeSettings", "Pictures", "DEFAULT_CLASSES"]
