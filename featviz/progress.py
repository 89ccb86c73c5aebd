"""The one progress bar of featviz (renders, batches of units, the examples pass): tqdm on stderr,
or a notebook widget inside Jupyter."""
from __future__ import annotations

import sys
from typing import Iterable


def progress_bar(total: int, desc: str, *, unit: str = "step", initial: int = 0, leave: bool = True,
                 iterable: Iterable | None = None):
    """A tqdm bar of ``total`` ``unit``s (``update(n)``, ``set_postfix_str``, ``close``); with
    ``iterable``, iterating the bar yields its items and advances it by one each."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, initial=initial, desc=desc[:40], unit=unit, leave=leave, file=sys.stderr,
                dynamic_ncols=True)
