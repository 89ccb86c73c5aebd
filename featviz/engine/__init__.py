"""Where batches of work run: in this process (``local``) or on a Ray cluster (``ray``).

The microscope build and the dataset-examples pass cut their work into
``Job``s: a module-level function applied to the model and to picklable
arguments (a batch of units with its seed, a shard of a photo folder). An
engine runs the jobs and hands each result back to the caller, the *driver*,
as it completes. Only the driver writes files, stores and manifests, so an
engine never has to share a filesystem with it for output, a job retried after
a worker died cannot write anything twice, and the seed of every job is fixed
before it is sent: a build gives the same images on either engine.

    from featviz.engine import get_engine
    with get_engine("ray", address="auto") as engine:
        featviz.microscope.build("efficientnet_lite0", "site", "photos/", engine=engine)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ..errors import FeatvizError

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Job:
    """``fn(model, *args)``: ``fn`` must be importable by name (module level) and ``args`` picklable."""

    fn: Callable[..., Any]
    args: tuple = ()


@dataclass
class Done:
    """A finished job: its position in the submitted list, its result, and the seconds it computed."""

    index: int
    result: Any
    seconds: float


class Engine:
    """What every engine offers: ``run(model, jobs)`` yielding ``Done`` as jobs complete,
    ``workers`` (jobs at once), ``distributed`` (jobs run in other processes), ``describe()``,
    and ``close()`` (also on leaving a ``with`` block)."""

    name = "engine"
    workers = 1
    distributed = False

    def run(self, model, jobs: Sequence[Job]) -> Iterator[Done]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalEngine(Engine):
    """Runs the jobs one after another in this process, in the order given."""

    name = "local"

    def run(self, model, jobs: Sequence[Job]) -> Iterator[Done]:
        for i, job in enumerate(jobs):
            t = time.perf_counter()
            result = job.fn(model, *job.args)
            yield Done(i, result, time.perf_counter() - t)

    def describe(self) -> str:
        return "local engine (this process)"


def get_engine(name: str | None = "local", address: str | None = None, **options):
    """An engine by name: ``local`` (default) or ``ray`` (``address``: an existing cluster, e.g. ``auto``
    or ``ray://host:10001``; none starts Ray on this machine). ``options`` go to ``RayEngine``."""
    name = (name or "local").lower()
    if name == "local":
        if address is not None:
            raise FeatvizError("--address is for --engine ray")
        return LocalEngine()
    if name == "ray":
        from .ray_engine import RayEngine

        return RayEngine(address=address, **options)
    raise FeatvizError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Done", "Engine", "Job", "LocalEngine", "get_engine"]
