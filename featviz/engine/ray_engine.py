"""The Ray engine: jobs run as Ray tasks; each worker process holds the model once.

The model goes into Ray's object store once (again only if its weights change). Tasks get a reference
to it wrapped in a list (Ray would otherwise fetch and unpickle the model for
every task) and a key; a worker keeps the model of the last key it saw, so a
worker that runs fifty batches loads the network once. A task asks for one GPU
when the cluster has GPUs (the worker then moves the model to CUDA), else for
``cpus_per_task`` CPUs; Ray sets the worker's thread count to that.

Failures: a task whose worker dies (killed, out of memory, a pre-empted node)
is retried by Ray up to ``max_retries`` times; an error raised by the job
itself (a bad layer name...) is not retried and reaches the driver as the
original exception. At most ``max_in_flight`` tasks are queued at a time, so
results never pile up in the object store and an interrupted driver cancels
little work.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import time
import uuid
from typing import Iterator, Sequence

from ..errors import FeatvizError
from . import Done, Engine, Job

INSTALL_HINT = "pip install 'featviz[ray]'"

# Worker-side cache: key of the model last used by this worker process -> the model.
_WORKER_MODEL: dict = {}


def _import_ray():
    try:
        import ray
    except ImportError:
        raise FeatvizError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _run_job(box: list, key: str, job: Job):
    """Runs in a Ray worker: the job on the worker's copy of the model; returns (result on CPU, seconds)."""
    import ray

    model = _WORKER_MODEL.get(key)
    if model is None:
        _WORKER_MODEL.clear()  # one model per worker: a new run replaces the old one
        model = ray.get(box[0])
        if ray.get_gpu_ids():
            model = model.to("cuda")
        _WORKER_MODEL[key] = model
    t = time.perf_counter()
    result = job.fn(model, *job.args)
    return _to_cpu(result), time.perf_counter() - t


def _to_cpu(obj):
    """Tensors anywhere in lists/tuples/dicts moved to the CPU (the driver may have no GPU)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    return obj


def _model_key(model) -> str:
    """Changes when anything a job could see changes: weights, normalization, input size, name."""
    digest = model.weights_digest() if hasattr(model, "weights_digest") else uuid.uuid4().hex
    parts = [getattr(model, "name", type(model).__name__), digest, repr(getattr(model, "mean", None)), repr(getattr(model, "std", None)),
             repr(getattr(model, "input_size", None))]
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


class RayEngine(Engine):
    """Runs jobs as Ray tasks on a cluster (``address``) or on a Ray started on this machine.

    address: None starts a local Ray (``num_cpus`` CPUs, default all) unless Ray is already
    initialized in this process; ``"auto"`` or ``"ray://host:10001"`` joins a running cluster.
    gpus_per_task: None = 1 when the cluster has GPUs, else 0.
    """

    name = "ray"
    distributed = True

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, cpus_per_task: float = 1,
                 gpus_per_task: float | None = None, max_retries: int = 3, max_in_flight: int | None = None):
        ray = _import_ray()
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            if address is None:
                kwargs["num_cpus"] = num_cpus
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = address or "this machine"
                raise FeatvizError(f"could not start or reach a Ray cluster at {where}: {exc}") from None
            self._owns = True
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        self.gpus_per_task = (1.0 if gpus >= 1 else 0.0) if gpus_per_task is None else float(gpus_per_task)
        self.cpus_per_task = float(cpus_per_task)
        if self.gpus_per_task > 0:
            self.workers = max(1, int(gpus // self.gpus_per_task))
        else:
            self.workers = max(1, int(float(resources.get("CPU", 1)) // max(self.cpus_per_task, 1e-9)))
        self.max_in_flight = max_in_flight or 2 * self.workers
        self._shipped: tuple[list, str] | None = None
        self._task = ray.remote(_run_job).options(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
                                                  max_retries=max_retries, retry_exceptions=False)

    def describe(self) -> str:
        per = f"{self.gpus_per_task:g} GPU" if self.gpus_per_task else f"{self.cpus_per_task:g} CPU"
        return f"ray engine ({self.workers} workers of {per})"

    def run(self, model, jobs: Sequence[Job]) -> Iterator[Done]:
        """Submit ``jobs`` (at most ``max_in_flight`` at once) and yield each as it completes."""
        ray = self._ray
        if not jobs:
            return
        box, key = self._ship(model)
        waiting = list(enumerate(jobs))[::-1]
        pending: dict = {}
        try:
            while waiting or pending:
                while waiting and len(pending) < self.max_in_flight:
                    i, job = waiting.pop()
                    pending[self._task.remote(box, key, job)] = i
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i = pending.pop(ref)
                    result, seconds = self._get(ref)
                    yield Done(i, result, seconds)
        finally:
            for ref in pending:  # the driver stopped early (error, Ctrl-C): drop the queued work
                try:
                    ray.cancel(ref)
                except Exception:
                    pass

    def _ship(self, model) -> tuple[list, str]:
        """The model in the object store, once per engine and state of the model: a build's examples
        pass and its renders share it, and workers keep it loaded from one to the other."""
        key = _model_key(model)
        if self._shipped is None or self._shipped[1] != key:
            shipped = model
            if str(getattr(model, "device", "cpu")) != "cpu":
                shipped = copy.deepcopy(model).to("cpu")  # a worker without a GPU must be able to unpickle it
            self._shipped = ([self._ray.put(shipped)], key)
        return self._shipped

    def _get(self, ref):
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (FeatvizError, KeyboardInterrupt)):
                raise cause from None  # the job's own error, as one clear line
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
            raise FeatvizError(f"a Ray worker died more often than the retries allow: {exc}") from None

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False
