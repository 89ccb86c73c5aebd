"""Training: fine-tune a model organism, and watch its features change.

- ``finetune`` (``featviz finetune``): fine-tune on a folder of class folders or the offline
  demo task, with a held-out split, checkpoints and resume after a kill.
- ``evolve`` (``featviz evolve``): render units at every checkpoint, their top held-out examples
  at the start and the end, and linear CKA of every main layer to the starting network.
- ``linear_cka``: the similarity measure (Kornblith et al. 2019).

The fine-tuning report (``featviz report finetune``) lives with the other reports.
"""
from .cka import gram, linear_cka, linear_cka_from_grams
from .finetune import (TrainResult, TrainSettings, checkpoints, finetune, load_checkpoint, prepare, read_run, run_of_spec,
                       start_spec, train)

__all__ = ["finetune", "train", "prepare", "TrainSettings", "TrainResult", "checkpoints", "load_checkpoint",
           "read_run", "run_of_spec", "start_spec", "linear_cka", "linear_cka_from_grams", "gram", "evolve"]


def __getattr__(name):
    # evolve renders and draws (matplotlib): imported on first use only.
    if name == "evolve":
        from .evolve import evolve

        return evolve
    raise AttributeError(name)
