"""The build's GPU plumbing, checked without a GPU: the device asked for reaches the model every job
receives, every job computes where the model is, and Ray gives each task one GPU and a CUDA model.

A real CUDA run is not possible here; these tests fail if a device string is dropped on the way
(CLI -> load -> build -> jobs) or a job computes with tensors that do not follow ``model.device``.
"""
import copy
import os
import types

import pytest
import torch
from torch.overrides import TorchFunctionMode

from featviz.engine import Done, LocalEngine
from featviz.microscope import build


class _DeviceWatch(TorchFunctionMode):
    """Records the device types of every op's tensors, and the ops whose tensors are on more than one
    device (0-dim CPU scalars aside: torch moves those itself)."""

    def __init__(self):
        super().__init__()
        self.devices, self.mixed = set(), []

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        here = set()
        for value in list(args) + list(kwargs.values()):
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, torch.Tensor) and not (t.dim() == 0 and t.device.type == "cpu"):
                    here.add(t.device.type)
        self.devices |= here
        if len(here) > 1 and getattr(func, "__name__", "") not in ("to", "copy_", "cpu", "cuda"):
            self.mixed.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


class _WatchingEngine(LocalEngine):
    """Runs each job with the model it is given and records which devices its tensors were on, and
    which model (by identity) each job received."""

    def __init__(self):
        self.models, self.devices, self.kinds, self.mixed = set(), set(), set(), []

    def run(self, model, jobs):
        for i, job in enumerate(jobs):
            self.models.add(id(model))
            self.kinds.add(job.fn.__name__)
            with _DeviceWatch() as watch:
                result = job.fn(model, *job.args)
            self.devices |= watch.devices
            self.mixed += watch.mixed
            yield Done(i, result, 0.0)


def test_build_loads_the_model_on_the_device_asked_for(monkeypatch, tmp_path):
    """build(name, device=...) hands the device to the loader (which refuses, in one line, a device that
    is not there); the CLI's --device goes the same way (featviz.cli.common.load_model)."""
    import featviz.models

    seen = []

    class Stop(Exception):
        pass

    def recording_load(name, device=None, **kw):
        seen.append(str(device))
        raise Stop

    monkeypatch.setattr(featviz.models, "load", recording_load)
    with pytest.raises(Stop):
        build("efficientnet_lite0", tmp_path / "site", device="cuda")
    assert seen == ["cuda"]
    assert not (tmp_path / "site").exists()


def test_every_build_job_computes_on_the_models_device(lite0, tmp_path):
    """Every job of a build (renders of each kind, diversity, caricature, DeepDream, class images,
    classes and circuits by attribution, the examples pass) receives the build's model, and no op of
    a job mixes tensors of two devices. On this CPU-only machine every tensor is on the CPU;
    FEATVIZ_TEST_DEVICE=cuda runs the same build with the model on a GPU."""
    device = os.environ.get("FEATVIZ_TEST_DEVICE", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("FEATVIZ_TEST_DEVICE=cuda but CUDA is not available")
    model = lite0 if device == "cpu" else copy.deepcopy(lite0).to(device)
    engine = _WatchingEngine()
    build(model, tmp_path / "site", layers=["blocks.2", "blocks.4"], units=2, steps=2, size=32, batch_size=2,
          classes=(1,), k=2, engine=engine)
    assert engine.models == {id(model)}
    assert model.device.type in engine.devices and not engine.mixed
    assert {"render_kind", "render_diversity", "render_caricatures", "render_dream", "render_classes",
            "attribution_effects", "circuit_effects"} <= engine.kinds


def test_ray_gives_each_task_one_gpu_and_a_cuda_model(monkeypatch):
    """On a cluster with GPUs a task asks for one GPU (workers = GPUs), and the worker moves its copy
    of the model to CUDA before running the job."""
    from featviz.engine import ray_engine

    options = {}

    class FakeRemote:
        def options(self, **kw):
            options.update(kw)
            return self

    fake_ray = types.SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: {"CPU": 16.0, "GPU": 4.0},
                                     remote=lambda fn: FakeRemote(), get_gpu_ids=lambda: [0],
                                     get=lambda ref: ref)
    monkeypatch.setattr(ray_engine, "_import_ray", lambda: fake_ray)
    engine = ray_engine.RayEngine()
    assert engine.gpus_per_task == 1.0 and options["num_gpus"] == 1.0
    assert engine.workers == 4
    assert "4 workers of 1 GPU" in engine.describe()

    moved = []

    class Model:
        def to(self, device):
            moved.append(device)
            return self

    import sys
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    ray_engine._WORKER_MODEL.clear()
    result, _ = ray_engine._run_job([Model()], "key", types.SimpleNamespace(fn=lambda m: "ran", args=()))
    assert result == "ran" and moved == ["cuda"]
    ray_engine._WORKER_MODEL.clear()
