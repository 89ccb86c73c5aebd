"""Fine-tune a model organism on a labelled image set, checkpointed and resumable.

    from featviz.training import TrainSettings, finetune
    run = finetune("efficientnet_lite0", None, "runs/shapes", TrainSettings(epochs=3, per_class=20))
    run.heldout_accuracy

A run folder holds::

    run.json              what was trained, on what, with which settings (the run's identity)
    labels.txt            one class name per line
    model.toml            a model spec: base network + the final weights (``featviz render RUN/model.toml ...``)
    start.toml            the same spec with the starting weights (``checkpoints/start.pt``), named ``<run>@start``
    metrics.json          loss and accuracy per epoch, held-out accuracy, the checkpoints
    checkpoints/*.pt      state dicts: start.pt (before training), step-NNNNNN.pt
    resume.pt             the last checkpoint's full state: weights, optimizer, RNG states, epoch and step
    heldout/<class>/*.png the held-out images (the probe set of ``featviz evolve``)

Resuming: a run killed at any moment (SIGKILL included) starts again from
``resume.pt`` when called with the same settings. Every file is written
atomically and ``resume.pt`` last, so it never points past what is on disk. The
data order comes from (seed, epoch), the augmentation and dropout from RNG
states saved in ``resume.pt``: with the same thread count, a resumed run's
weights equal an uninterrupted run's bit for bit.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import FeatvizError
from ..imageio import atomic_write, save_png, to_pil
from ..models import load
from ..models.organism import ModelOrganism
from .data import DEMO_SIZE, Split, augment, demo_split, folder_split
from .network import Trainable, freeze_through, trainable_copy

RUN_FORMAT = 1
CLIP_NORM = 1.0  # gradient norm clip: the folded-BN networks have no normalization to absorb a large step


@dataclass(frozen=True)
class TrainSettings:
    """How to fine-tune. ``steps``, when given, fixes the number of optimizer steps whatever the
    data size (the report compares budgets at the same steps); else ``epochs`` passes.
    ``checkpoint_every``: steps between checkpoints (0: at the end of every epoch).
    ``holdout``: held-out images per class. ``size``: image side (None: 96 px for the demo
    task, the model's input size for a folder)."""

    epochs: int = 5
    steps: int | None = None
    lr: float = 1e-4
    head_lr_factor: float = 10.0
    weight_decay: float = 1e-4
    batch_size: int = 16
    per_class: int | None = None
    holdout: int = 10
    freeze_until: str | None = None
    from_scratch: bool = False
    seed: int = 0
    checkpoint_every: int = 0
    size: int | None = None

    def check(self) -> None:
        for name in ("epochs", "batch_size", "holdout"):
            if getattr(self, name) < 1:
                raise FeatvizError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise FeatvizError(f"steps must be at least 1, got {self.steps}")
        if self.per_class is not None and self.per_class < 1:
            raise FeatvizError(f"examples per class must be at least 1, got {self.per_class}")
        if not (0 < self.lr < 10):
            raise FeatvizError(f"learning rate must be in (0, 10), got {self.lr}")
        if not self.head_lr_factor > 0:
            raise FeatvizError(f"head learning-rate factor must be positive, got {self.head_lr_factor}")
        if self.checkpoint_every < 0:
            raise FeatvizError(f"checkpoint every must be 0 (every epoch) or a number of steps, "
                               f"got {self.checkpoint_every}")
        if self.size is not None and not 32 <= self.size <= 1024:
            raise FeatvizError(f"image size must be between 32 and 1024 px, got {self.size}")


@dataclass
class TrainResult:
    """The trained module, the starting weights, the metrics and (with a run folder) where they are.
    ``trainable`` is None when ``finetune`` found the run already complete (load it with
    ``load_checkpoint``)."""

    trainable: Trainable | None
    start_state: dict
    metrics: dict
    split: Split
    run_dir: Path | None = None
    resumed_from: int | None = None
    log: list[str] = field(default_factory=list)

    @property
    def heldout_accuracy(self) -> float:
        return self.metrics["heldout_accuracy"]


def prepare(model: ModelOrganism, data_dir, settings: TrainSettings) -> Split:
    """The training and held-out images of a run (see ``featviz.training.data``)."""
    size = settings.size or (DEMO_SIZE if data_dir is None else model.input_size)
    if data_dir is None:
        return demo_split(settings.per_class, settings.holdout, size, settings.seed)
    return folder_split(data_dir, model.preprocess, size, settings.per_class, settings.holdout, settings.seed)


@torch.no_grad()
def accuracy(module: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> float:
    """Top-1 accuracy of ``module`` (eval mode) on images in [0, 1]."""
    was_training = module.training
    module.eval()
    try:
        correct = 0
        for i in range(0, len(labels), batch_size):
            correct += int((module(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
    finally:
        module.train(was_training)
    return correct / max(1, len(labels))


def _save_torch(path: Path, obj) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch))


def train(model: ModelOrganism, split: Split, settings: TrainSettings, run_dir: Path | None = None,
          progress: bool = False, log: Callable[[str], None] | None = None) -> TrainResult:
    """The training loop (plain PyTorch: AdamW, cross-entropy, cosine learning rate, gradient
    clipping). With ``run_dir``, checkpoints there and resumes from its ``resume.pt``."""
    say = log or (lambda msg: None)
    seed = settings.seed
    n_train = len(split.train.labels)
    calibration = split.train.images[_epoch_order(n_train, seed, 10**6)[:32]]  # from-scratch LSUV scale
    module, classifier = trainable_copy(model, len(split.classes), from_scratch=settings.from_scratch,
                                        calibration=calibration, seed=seed)
    frozen = freeze_through(model, module.network, settings.freeze_until)
    if settings.freeze_until and classifier in {name.rpartition(".")[0] for name in frozen}:
        raise FeatvizError(f"--freeze-until {settings.freeze_until} freezes the classifier too: nothing to train")
    start_state = {k: v.detach().clone() for k, v in module.network.state_dict().items()}
    params = [p for p in module.network.parameters() if p.requires_grad]
    # The new classifier starts from nothing and learns faster than the body may move: a body step
    # of AdamW at 1e-3 wrecks the BN-free pretrained features within a few steps (held-out accuracy
    # fell to chance at 25 images per class), hence lr for the body and head_lr_factor x lr for the head.
    head = {id(p) for name, p in module.network.named_parameters() if name.rpartition(".")[0] == classifier}
    groups = [{"params": [p for p in params if id(p) not in head], "lr": settings.lr},
              {"params": [p for p in params if id(p) in head], "lr": settings.lr * settings.head_lr_factor}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=settings.weight_decay)
    batch = min(settings.batch_size, n_train)
    per_epoch = math.ceil(n_train / batch)
    total = settings.steps or settings.epochs * per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    every = settings.checkpoint_every or per_epoch
    metrics = {"epochs": [], "checkpoints": [], "steps": total, "steps_per_epoch": per_epoch, "batch_size": batch,
               "frozen_parameters": len(frozen), "trained_parameters": sum(p.numel() for p in params)}
    step, epoch, in_epoch = 0, 0, {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    resumed_from = None

    with torch.random.fork_rng(devices=[]):  # dropout's RNG, without touching the caller's
        torch.manual_seed(seed)
        augment_rng = torch.Generator().manual_seed(seed + 7)
        if run_dir is not None and (run_dir / "resume.pt").is_file():
            state = torch.load(run_dir / "resume.pt", weights_only=False)
            module.network.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            torch.set_rng_state(state["rng"])
            augment_rng.set_state(state["augment_rng"])
            step, epoch, in_epoch, metrics = state["step"], state["epoch"], state["in_epoch"], state["metrics"]
            resumed_from = step
            say(f"resuming from step {step} of {total} (epoch {epoch + 1})")
        elif run_dir is not None:
            _save_torch(run_dir / "checkpoints" / "start.pt", start_state)
            metrics["checkpoints"].append({"step": 0, "epoch": 0, "file": "checkpoints/start.pt"})

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=step, desc="fine-tuning", unit="step", dynamic_ncols=True)
        module.train()
        try:
            while step < total:
                order = _epoch_order(n_train, seed, epoch)
                done = step - epoch * per_epoch  # batches of this epoch before a resume: every epoch but
                for b in range(done, per_epoch):  # the last (cut short by ``steps``) has per_epoch
                    if step >= total:
                        break
                    t0 = time.perf_counter()
                    idx = order[b * batch:(b + 1) * batch]
                    x = augment(split.train.images[idx], augment_rng)
                    y = split.train.labels[idx]
                    logits = module(x)
                    loss = F.cross_entropy(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
                    optimizer.step()
                    schedule.step()
                    step += 1
                    in_epoch["loss"] += float(loss.detach()) * len(y)
                    in_epoch["correct"] += int((logits.argmax(1) == y).sum())
                    in_epoch["seen"] += len(y)
                    in_epoch["seconds"] += time.perf_counter() - t0
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{float(loss):.3f}", epoch=epoch + 1)
                    epoch_done = b == per_epoch - 1 or step >= total
                    if epoch_done:
                        record = {"epoch": epoch + 1, "step": step,
                                  "train_loss": in_epoch["loss"] / in_epoch["seen"],
                                  "train_accuracy": in_epoch["correct"] / in_epoch["seen"],
                                  "heldout_accuracy": accuracy(module, split.heldout.images, split.heldout.labels),
                                  "seconds": in_epoch["seconds"], "images": in_epoch["seen"]}
                        metrics["epochs"].append(record)
                        say(f"epoch {epoch + 1}: loss {record['train_loss']:.3f}, train accuracy "
                            f"{record['train_accuracy']:.3f}, held-out accuracy {record['heldout_accuracy']:.3f}")
                        epoch += 1
                        in_epoch = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
                    if run_dir is not None and (step % every == 0 or step >= total or
                                                (settings.checkpoint_every == 0 and epoch_done)):
                        _checkpoint(run_dir, module, optimizer, schedule, augment_rng, step, epoch, in_epoch, metrics)
                    if epoch_done:
                        break
        finally:
            if bar is not None:
                bar.close()
        module.eval()
    metrics["heldout_accuracy"] = metrics["epochs"][-1]["heldout_accuracy"] if metrics["epochs"] else \
        accuracy(module, split.heldout.images, split.heldout.labels)
    metrics["complete"] = True
    return TrainResult(module, start_state, metrics, split, run_dir, resumed_from)


def _checkpoint(run_dir: Path, module, optimizer, schedule, augment_rng, step, epoch, in_epoch, metrics) -> None:
    """Weights to checkpoints/step-N.pt, then the full state to resume.pt (last, atomically)."""
    name = f"checkpoints/step-{step:06d}.pt"
    _save_torch(run_dir / name, module.network.state_dict())
    if not any(c["step"] == step for c in metrics["checkpoints"]):
        metrics["checkpoints"].append({"step": step, "epoch": epoch, "file": name})
    _save_torch(run_dir / "resume.pt", {
        "model": module.network.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "rng": torch.get_rng_state(), "augment_rng": augment_rng.get_state(), "step": step, "epoch": epoch,
        "in_epoch": dict(in_epoch), "metrics": json.loads(json.dumps(metrics))})
    _write_json(run_dir / "metrics.json", {**metrics, "complete": False})


def _write_json(path: Path, data) -> Path:
    text = json.dumps(data, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# -- the run folder ------------------------------------------------------------------------------

def _identity(model: ModelOrganism, data_dir, settings: TrainSettings, split: Split) -> dict:
    return {"format": RUN_FORMAT, "base": model.name, "data": str(Path(data_dir).resolve()) if data_dir else "demo",
            "classes": split.classes, "train_images": len(split.train.labels),
            "heldout_images": len(split.heldout.labels), "settings": asdict(settings),
            "threads": torch.get_num_threads()}


def _open_run(run_dir: Path, identity: dict) -> bool:
    """Check that ``run_dir`` is new, empty, or this same run; True when it is already complete."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FeatvizError(f"{run_dir} is a file, not a run folder")
    marker = run_dir / "run.json"
    if run_dir.is_dir() and any(p.name != ".lock" for p in run_dir.iterdir()) and not marker.is_file():
        raise FeatvizError(f"{run_dir} is not empty and holds no featviz run (no run.json); give a new folder "
                           "(featviz never writes into folders it did not make)")
    if marker.is_file():
        old = json.loads(marker.read_text(encoding="utf-8"))
        mine = {k: v for k, v in identity.items() if k != "threads"}
        theirs = {k: v for k, v in old.items() if k != "threads"}
        if mine != theirs:
            diff = [k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)]
            if "settings" in diff:
                diff.remove("settings")
                diff += [f"--{k.replace('_', '-')}" for k in identity["settings"]
                         if identity["settings"][k] != old.get("settings", {}).get(k)]
            raise FeatvizError(f"{run_dir} holds a run made with other settings ({', '.join(sorted(diff))}); "
                               "give a new --out folder to train again")
        # Another thread count is allowed: the resumed weights then equal an uninterrupted run's only
        # within float rounding (the order of the sums in the kernels changes).
        metrics = run_dir / "metrics.json"
        return metrics.is_file() and json.loads(metrics.read_text(encoding="utf-8")).get("complete", False)
    return False


def _write_heldout(run_dir: Path, split: Split) -> None:
    for i, (image, label) in enumerate(zip(split.heldout.images, split.heldout.labels)):
        path = run_dir / "heldout" / split.classes[int(label)] / f"{i:04d}.png"
        if not path.exists():
            save_png(to_pil(image), path, {"kind": "heldout", "class": split.classes[int(label)]})


def write_spec(run_dir: Path, model: ModelOrganism, weights: str, size: int) -> Path:
    """``run_dir/model.toml``: the base network, these weights, its normalization, size, labels, layers."""
    def toml_list(values) -> str:
        return "[" + ", ".join(json.dumps(v) for v in values) + "]"

    text = "\n".join([
        "# Written by featviz finetune: the fine-tuned network as a model spec.",
        f"name = {json.dumps(run_dir.resolve().name)}",
        f"base = {json.dumps(model.name)}",
        f"weights = {json.dumps(weights)}",
        f"mean = {toml_list(model.mean.flatten().tolist())}",
        f"std = {toml_list(model.std.flatten().tolist())}",
        f"input_size = {int(size)}",
        'labels = "labels.txt"',
        f"layers = {toml_list(info.name for info in model.layers())}",
        ""])
    return atomic_write(run_dir / "model.toml", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def finetune(model, data_dir=None, out=None, settings: TrainSettings = TrainSettings(), *, progress: bool = False,
             log: Callable[[str], None] | None = None) -> TrainResult:
    """Fine-tune ``model`` (an organism or a name) on ``data_dir`` (one sub-folder of images per
    class; None: the offline demo task), writing the run folder ``out`` (see the module
    docstring). Called again on a killed run with the same settings, it resumes; on a complete
    run it returns its metrics without training."""
    from .._storage import FolderLock

    say = log or (lambda msg: None)
    settings.check()
    model = load(model)  # a name, a spec, or an organism as is
    if settings.freeze_until is not None:
        model.layer(settings.freeze_until)
    split = prepare(model, data_dir, settings)
    for line in split.skipped:
        say(f"skipped: {line}")
    say(f"data: {len(split.classes)} classes, {len(split.train.labels)} training and {len(split.heldout.labels)} "
        f"held-out images ({split.description})")
    if out is None:
        return train(model, split, settings, None, progress, say)
    run_dir = Path(out)
    identity = _identity(model, data_dir, settings, split)
    if _open_run(run_dir, identity):
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        say(f"{run_dir} is complete: held-out accuracy {metrics['heldout_accuracy']:.3f}")
        return TrainResult(None, {}, metrics, split, run_dir, metrics["steps"])
    with FolderLock(run_dir, f"another featviz finetune is writing {run_dir}"):
        _write_json(run_dir / "run.json", identity)
        labels = "\n".join(split.classes) + "\n"
        atomic_write(run_dir / "labels.txt", lambda tmp: Path(tmp).write_text(labels, encoding="utf-8"))
        _write_heldout(run_dir, split)
        if split.skipped:
            _write_json(run_dir / "skipped.json", split.skipped)
        result = train(model, split, settings, run_dir, progress, say)
        final = result.metrics["checkpoints"][-1]["file"]
        write_spec(run_dir, model, final, split.train.images.shape[-1])
        start_spec(run_dir)
        _write_json(run_dir / "metrics.json", result.metrics)
    say(f"held-out accuracy {result.heldout_accuracy:.3f}; wrote {run_dir / 'model.toml'}")
    return result


# -- reading a run back ---------------------------------------------------------------------------------

def read_run(run_dir) -> dict:
    """run.json of a run folder, or one clear line."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise FeatvizError(f"{run_dir} is not a featviz finetune run (no run.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def checkpoints(run_dir) -> list[dict]:
    """The run's checkpoints in training order (start first): dicts with step, epoch, file."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FeatvizError(f"{run_dir} has no metrics.json yet: run featviz finetune to the end first")
    found = json.loads(metrics_path.read_text(encoding="utf-8"))["checkpoints"]
    return [c for c in sorted(found, key=lambda c: c["step"]) if (run_dir / c["file"]).is_file()]


START_SPEC = "start.toml"


def run_of_spec(spec) -> Path | None:
    """The run folder when ``spec`` is the ``model.toml`` that ``featviz finetune`` wrote into it, else None."""
    if spec is None:
        return None
    path = Path(spec)
    folder = path.parent
    if path.name != "model.toml" or not (folder / "run.json").is_file() or not (folder / "checkpoints").is_dir():
        return None
    return folder


def start_spec(run_dir) -> Path:
    """``RUN/start.toml``: the run's model spec with its starting weights (``checkpoints/start.pt``: the
    ImageNet body and the new classifier as initialized, or the random network of a from-scratch
    run), named ``<run>@start``. Written when missing (runs made before featviz wrote it)."""
    from ..models.spec import read_spec

    run_dir = Path(run_dir)
    read_run(run_dir)
    path = run_dir / START_SPEC
    if path.is_file():
        return path
    if not (run_dir / "checkpoints" / "start.pt").is_file():
        raise FeatvizError(f"{run_dir} has no starting checkpoint (checkpoints/start.pt)")
    spec = read_spec(run_dir / "model.toml")
    spec |= {"name": f"{spec.get('name', run_dir.resolve().name)}@start", "weights": "checkpoints/start.pt"}
    # every value of a run's spec (strings, numbers, lists of them) is written the same in JSON and TOML
    lines = ["# Written by featviz: the network this run started from, as a model spec."]
    lines += [f"{key} = {json.dumps(value)}" for key, value in spec.items()]
    text = "\n".join(lines) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def load_checkpoint(run_dir, checkpoint: str) -> ModelOrganism:
    """The network of one checkpoint of a run as a model organism: the run's model spec
    (``model.toml``) with the checkpoint's state dict, named ``<run>@<checkpoint>``."""
    run_dir = Path(run_dir)
    read_run(run_dir)
    spec = run_dir / "model.toml"
    if not spec.is_file():
        raise FeatvizError(f"{run_dir} is not finished (no model.toml yet): run the same featviz finetune "
                           "command again to finish it")
    path = run_dir / checkpoint
    if not path.is_file():
        raise FeatvizError(f"checkpoint not found: {path}")
    organism = load(str(spec), weights=str(path))
    organism.name = f"{run_dir.resolve().name}@{Path(checkpoint).stem}"
    return organism
