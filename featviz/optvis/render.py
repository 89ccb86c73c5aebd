"""The render loop: objective x parameterization x transforms.

``render`` builds a parameterization, then for each step: makes the image,
takes random robust views of it, runs the model only up to the deepest layer
the objective needs, and follows the gradient of the objective. Everything
random comes from one seeded ``torch.Generator`` on the model's device, so a
seed reproduces the image. Nothing is global: the device is the model's.
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import FeatvizError, NonFiniteLossError
from ..imageio import grid, save_gif, save_png, to_pil
from ..models.organism import ModelOrganism
from .objectives import Objective, as_objective, batched_channels
from .param import make_param
from .transforms import TransformSpec, get_spec


@dataclass(frozen=True)
class Recipe:
    """Settings of one render; presets below, override any field per call."""

    name: str = "default"
    steps: int = 96
    lr: float = 0.05
    optimizer: str = "adam"
    param: str = "fourier"
    decorrelate: bool = True
    decay: float = 1.0
    transforms: str | TransformSpec = "multicrop"
    lr_schedule: str = "cosine"  # constant | cosine (decay to 10 % of lr: settles the fine detail)


RECIPES = {
    # Chosen by benchmarks/bench_render.py (see README): Fourier + decorrelated
    # colour, 4 random crops per step, cosine-decayed Adam.
    "default": Recipe(),
    # Lucid / Lucent defaults, kept for comparison and for users who want them.
    "lucid": Recipe("lucid", steps=512, lr=0.05, transforms="lucid", lr_schedule="constant"),
    # Magnitude-constrained (MACO-style): phase-only Fourier with natural spectrum.
    "maco": Recipe("maco", steps=96, lr=0.05, param="maco", transforms="multicrop"),
    # Highest activation for units (channel/neuron) at the cost of busier images:
    # only a 2 px jitter and more steps (benchmarks/bench_render.py: channel ratio
    # 4.2 vs 3.0 for the default, at about the same time per unit when batched).
    # pad 2 + jitter 4 = shifts of ±2 px at the same size, so no resampling is needed.
    "sharp": Recipe("sharp", steps=512, lr=0.05, transforms=TransformSpec("jitter2", pad=2, jitter=4)),
    # Quick previews (tests, the microscope's quick mode).
    "quick": Recipe("quick", steps=32, lr=0.08),
}

OPTIMIZERS: dict[str, Callable] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
                                   "nadam": torch.optim.NAdam}


@dataclass
class RenderResult:
    """Images (N, C, H, W) in [0, 1] with the settings that made them."""

    images: torch.Tensor
    settings: dict
    history: list[float] = field(default_factory=list)  # objective value (sum over batch) per step
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> images
    interrupted: bool = False

    def __len__(self):
        return self.images.shape[0]

    def pil(self, i: int = 0):
        return to_pil(self.images[i])

    def pils(self):
        return [self.pil(i) for i in range(len(self))]

    def sheet(self, columns: int | None = None, labels: Sequence[str] | None = None):
        return grid(self.pils(), columns=columns, labels=labels)

    def save(self, path, i: int | None = None):
        """Save image ``i`` (or a contact sheet of all when ``i`` is None and N > 1) as PNG with settings."""
        if i is None and len(self) > 1:
            return save_png(self.sheet(), path, self.settings)
        i = i or 0
        return save_png(self.pil(i), path, {**self.settings, "batch_index": i})

    def save_gif(self, path, i: int = 0, duration_ms: int = 80):
        frames = [to_pil(self.snapshots[s][i]) for s in sorted(self.snapshots)]
        return save_gif(frames, path, duration_ms, self.settings)

    def _repr_png_(self):  # inline display in Jupyter
        buf = io.BytesIO()
        (self.sheet() if len(self) > 1 else self.pil()).save(buf, format="PNG")
        return buf.getvalue()


def render(model: ModelOrganism, objective: Objective | str, *, size: int | None = None, batch: int = 1,
           recipe: str | Recipe = "auto", steps: int | None = None, lr: float | None = None,
           param: str | None = None, transforms: str | TransformSpec | None = None, optimizer: str | None = None,
           seed: int = 0, init_image: torch.Tensor | None = None, alpha: bool = False,
           snapshot_every: int | None = None, thresholds: Sequence[int] = (), progress: bool = False,
           callback: Callable[[int, float], None] | None = None, max_rows: int | None = None) -> RenderResult:
    """Optimize an image (or a batch) to maximize ``objective``.

    ``objective``: an ``Objective`` or shorthand such as ``"blocks.8:12"``,
    ``"logit:309"``, ``"prob:309"``, ``"dream:blocks.5"``.
    ``size``: side in pixels (default: the model's input size).
    ``recipe``: ``auto`` (``default`` for class objectives, ``sharp`` for units:
    what bench_render.py measured best for each) | ``default`` | ``sharp`` |
    ``lucid`` | ``maco`` | ``quick``; ``steps``, ``lr``,
    ``param`` (pixel | fourier | maco), ``transforms`` (multicrop | lucid | none)
    and ``optimizer`` override it. ``init_image``: start from a photo
    (DeepDream / caricature). ``alpha``: add a transparency channel,
    composited on random backgrounds during optimization.
    ``thresholds`` / ``snapshot_every``: keep intermediate images (for a GIF).
    Ctrl-C stops early and returns the last image with ``interrupted=True``.
    """
    objective = as_objective(objective, model)
    if recipe == "auto":
        recipe = auto_recipe(objective)
    recipe = RECIPES[recipe] if isinstance(recipe, str) and recipe in RECIPES else recipe
    if not isinstance(recipe, Recipe):
        raise FeatvizError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    overrides = {k: v for k, v in dict(steps=steps, lr=lr, param=param, transforms=transforms,
                                       optimizer=optimizer).items() if v is not None}
    recipe = replace(recipe, **overrides)
    _check_settings(recipe, batch)
    size = int(size or model.input_size)
    if size < 16 or size > 4096:
        raise FeatvizError(f"size must be between 16 and 4096 px, got {size}")
    device = model.device
    generator = torch.Generator(device=device).manual_seed(int(seed))

    if init_image is not None:
        init_image = init_image.to(device)
    extra = {"decay": recipe.decay} if recipe.param == "fourier" else {}
    image_param = make_param(recipe.param, batch, size, generator=generator, device=device,
                             decorrelate=recipe.decorrelate, alpha=alpha, init=init_image, **extra)
    spec = get_spec(recipe.transforms)
    # Jitter/pad are in pixels tuned for ~128 px; keep their relative size at other sizes.
    if spec.pad or spec.jitter:
        k = size / 128
        spec = replace(spec, pad=round(spec.pad * k), jitter=round(spec.jitter * k))
    augment = spec.build(out_size=size).to(device)

    # Rows (views x images) per forward pass: CPU convolutions lose cache
    # efficiency past ~16 rows at 128 px, GPUs want big batches.
    max_rows = max_rows or (16 if device.type == "cpu" else 512)
    opt_cls = OPTIMIZERS[recipe.optimizer]
    opt = _optimizer(opt_cls, list(image_param.parameters()), recipe.lr)
    params = [q for group in opt.param_groups for q in group["params"]]
    schedule = _schedule(recipe)
    thresholds = set(int(t) for t in thresholds)
    if snapshot_every:
        thresholds |= set(range(snapshot_every, recipe.steps + 1, snapshot_every))

    settings = {
        "model": model.name, "objective": objective.description, "size": size, "batch": batch, "seed": int(seed),
        "recipe": asdict(recipe) | {"transforms": asdict(spec)}, "alpha": alpha,
        "init_image": init_image is not None, "featviz": _version(), "torch": torch.__version__,
    }
    result = RenderResult(images=torch.empty(0), settings=settings)
    bar = _progress(recipe.steps, objective.description) if progress else None
    start = time.perf_counter()
    def forward_backward():
        """Make the images, take robust views, backpropagate the objective."""
        for q in params:  # what zero_grad(set_to_none=True) does, without its profiler bookkeeping
            q.grad = None
        images = image_param()
        rgb = _composite(images, generator) if alpha else images
        return images, _objective_backward(model, objective, augment(rgb, generator), batch, max_rows)

    last_good = None
    redirect = _RedirectedReLU(model)
    last_values = torch.zeros(batch)
    try:
        for step in range(1, recipe.steps + 1):
            # Redirect while some image's objective is still exactly zero (a dead
            # unit), for at most half of the steps; see the dead-start check below.
            redirect.active = redirect.enabled and step <= recipe.steps // 2 and bool((last_values == 0).any())
            for group in opt.param_groups:
                group["lr"] = recipe.lr * schedule(step - 1)
            images, per_image = forward_backward()
            # One device-to-host copy per step (each one waits for the GPU): the values serve the
            # NaN check, the history and the dead-unit test.
            last_values = per_image.detach().cpu()
            value = float(last_values.sum())
            if not math.isfinite(value):
                result.images = (last_good if last_good is not None else images.detach()).cpu()
                raise NonFiniteLossError(
                    f"the objective became {value} at step {step} ({objective.description}); "
                    "try a lower --lr or another objective")
            if step == 1 and _dead_images(image_param, batch):
                # Some image has no gradient at all: its unit sits behind a ReLU that is
                # off everywhere on the grey start. Let gradients through those ReLUs
                # (towards switching them on) until it fires, then run as usual.
                redirect.install()
                redirect.enabled = redirect.active = True
                images, per_image = forward_backward()
                last_values = per_image.detach().cpu()
                value = float(last_values.sum())
            opt.step()
            if redirect.active:
                redirect.steps += 1
                settings["redirected_relu_steps"] = redirect.steps
            result.history.append(value)
            last_good = images.detach()
            if step in thresholds:
                result.snapshots[step] = last_good.cpu()
            if bar is not None:
                bar.set_postfix_str(f"objective {value:.3g}", refresh=False)
                bar.update(1)
            if callback is not None:
                callback(step, value)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        redirect.remove()
        if bar is not None:
            bar.close()
    with torch.no_grad():
        final = image_param().detach()
    result.images = final.cpu()
    settings["steps_done"] = len(result.history)
    settings["seconds"] = round(time.perf_counter() - start, 3)
    settings["final_objective"] = result.history[-1] if result.history else None
    return result


def auto_recipe(objective: Objective) -> str:
    """The recipe ``auto`` stands for: multi-crop robustness for class objectives
    (it is what makes class images recognisable by other networks), light jitter
    and more steps for units (higher activation at the same time per unit)."""
    from ..models.organism import LOGITS

    return "default" if LOGITS in objective.layers else "sharp"


def render_units(model: ModelOrganism, units: Sequence[tuple[str, int]], *, batch_size: int = 16, kind: str = "channel",
                 progress: bool = False, seed: int = 0, **kwargs) -> list[RenderResult]:
    """Render many units, ``batch_size`` per optimization (one unit per batch element).

    ``kind``: channel | neuron | negative. Returns one single-image result per unit,
    each with its own settings (objective, batch index and seed of its batch).
    """
    if batch_size < 1:
        raise FeatvizError("batch size must be at least 1")
    for layer, ch in units:
        model.check_channel(layer, ch)
    out: list[RenderResult] = []
    chunks = [units[i:i + batch_size] for i in range(0, len(units), batch_size)]
    iterator = chunks
    if progress:
        iterator = _progress(len(chunks), f"{len(units)} units in batches of {batch_size}", unit="batch")(chunks)
    for chunk in iterator:
        objective = batched_channels(list(chunk), kind)
        res = render(model, objective, batch=len(chunk), seed=seed, **kwargs)
        for i, (layer, ch) in enumerate(chunk):
            desc = {"channel": f"channel {layer}:{ch}", "neuron": f"neuron {layer}:{ch} @ centre",
                    "negative": f"-1 * channel {layer}:{ch}"}[kind]
            settings = dict(res.settings, objective=desc, batch_index=i)
            snaps = {s: v[i:i + 1] for s, v in res.snapshots.items()}
            out.append(RenderResult(res.images[i:i + 1], settings, res.history, snaps, res.interrupted))
        if res.interrupted:
            break
    return out


def _objective_backward(model: ModelOrganism, objective: Objective, views: torch.Tensor, batch: int,
                        max_rows: int) -> torch.Tensor:
    """Forward the views, backpropagate the objective into the image parameters,
    and return the per-image objective (mean over each image's views).

    With many rows (views x images), views are processed in groups of whole
    views (each group holds every image once, so row indices keep their
    meaning), accumulating gradients: peak memory and cache use stay at
    ``max_rows`` rows. Objectives that couple images (diversity) need all rows
    at once and are evaluated in one pass.
    """
    rows = views.shape[0]
    n_views = rows // batch
    per_group = max(1, max_rows // batch)
    if rows <= max_rows or n_views <= per_group or not objective.rowwise:
        values = objective(model.activations(views, objective.layers), batch)
        per_image = values.reshape(n_views, batch).mean(0)
        (-per_image.sum()).backward()
        return per_image.detach()
    leaf = views.detach().requires_grad_(True)
    per_image = views.new_zeros(batch)
    for k in range(0, n_views, per_group):
        part = leaf[k * batch:(k + per_group) * batch]
        values = objective(model.activations(part, objective.layers), batch)
        part_sum = values.reshape(-1, batch).sum(0) / n_views
        (-part_sum.sum()).backward()
        per_image += part_sum.detach()
    views.backward(leaf.grad)
    return per_image


def _dead_images(image_param: nn.Module, batch: int) -> bool:
    """True if the gradient of some image of the batch is exactly zero."""
    grad = next(image_param.parameters()).grad
    if grad is None:
        return True
    return bool((grad.reshape(batch, -1).abs().sum(1) == 0).any())


class _RedirectGrad(torch.autograd.Function):
    """Clamp to [lo, hi] forward; backward also passes gradients that would move
    an input from outside the range back into it (Lucid's "redirected ReLU")."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        inside = (x > ctx.lo) & (x < ctx.hi)
        normal = grad * inside
        # Only where the true gradient is zero for a whole image (a dead unit) do we
        # pass the gradients that would switch it on; elsewhere the true gradient
        # stands, so live ReLUs keep their gating. grad is d(loss)/d(out): a
        # negative value asks for a larger output.
        towards = ((x <= ctx.lo) & (grad < 0)) | ((x >= ctx.hi) & (grad > 0))
        dead_rows = normal.flatten(1).abs().sum(1) == 0
        dead = dead_rows.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(dead, grad * (inside | towards), normal), None, None


class _RedirectedReLU:
    """Forward hooks that swap ReLU / ReLU6 gradients for redirected ones while active."""

    def __init__(self, model: ModelOrganism):
        self.active = self.enabled = False
        self.steps, self.handles = 0, []
        self.model = model

    def install(self):
        """Hook the ReLUs, only once a dead start is found: idle hooks on every ReLU
        would cost a Python call each per forward pass."""
        if self.handles:
            return
        for module in self.model.network.modules():
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                hi = 6.0 if isinstance(module, nn.ReLU6) else float("inf")
                self.handles.append(module.register_forward_hook(self._hook(hi)))

    def _hook(self, hi):
        def hook(_module, inputs, output):
            if self.active and torch.is_grad_enabled():
                return _RedirectGrad.apply(inputs[0], 0.0, hi)
            return None
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def _composite(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Put RGBA images on random smooth backgrounds, so the objective pays only
    for the parts the alpha channel keeps (transparent regions carry no signal)."""
    rgb, a = images[:, :3], images[:, 3:]
    n = images.shape[0]
    # A random colour per image, plus low-frequency noise, as the background.
    colour = torch.rand((n, 3, 1, 1), generator=generator, device=images.device)
    noise = torch.rand((n, 3, 4, 4), generator=generator, device=images.device)
    noise = torch.nn.functional.interpolate(noise, size=images.shape[-2:], mode="bilinear", align_corners=False)
    background = 0.5 * colour + 0.5 * noise
    return rgb * a + background * (1 - a)


def _optimizer(opt_cls, params: list, lr: float) -> torch.optim.Optimizer:
    """The fused implementation where torch has one for this optimizer and device (one pass over
    the parameters instead of about ten), else the default."""
    try:
        return opt_cls(params, lr=lr, fused=True)
    except (TypeError, RuntimeError, ValueError):
        return opt_cls(params, lr=lr)


def _schedule(recipe: Recipe) -> Callable[[int], float]:
    if recipe.lr_schedule == "constant":
        return lambda i: 1.0
    if recipe.lr_schedule == "cosine":
        n = max(recipe.steps - 1, 1)
        return lambda i: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / n))
    raise FeatvizError(f"unknown lr schedule {recipe.lr_schedule!r}: constant or cosine")


def _check_settings(recipe: Recipe, batch: int) -> None:
    if recipe.steps < 1 or recipe.steps > 100_000:
        raise FeatvizError(f"steps must be between 1 and 100000, got {recipe.steps}")
    if not (recipe.lr > 0 and math.isfinite(recipe.lr)):
        raise FeatvizError(f"learning rate must be a positive number, got {recipe.lr}")
    if recipe.optimizer not in OPTIMIZERS:
        raise FeatvizError(f"unknown optimizer '{recipe.optimizer}': choose one of {', '.join(OPTIMIZERS)}")
    if batch < 1 or batch > 4096:
        raise FeatvizError(f"batch must be between 1 and 4096, got {batch}")


def _progress(total: int, desc: str, unit: str = "step"):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc[:40], unit=unit, leave=False)

    class _Bar:
        def __init__(self):
            self._bar = bar

        def __call__(self, iterable):
            for item in iterable:
                yield item
                bar.update(1)
            bar.close()

        def __getattr__(self, name):
            return getattr(bar, name)

    return _Bar()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("featviz")
    except Exception:
        return "dev"


def finished(results):
    """``results`` (one ``RenderResult`` or a list of them) when every render ran to the end; else
    the Ctrl-C that stopped one (``interrupted``) is raised again as ``KeyboardInterrupt``.

    For callers that make many renders (reports, Building Blocks, the microscope): ``render`` returns
    on Ctrl-C so that a single render keeps its last image, but a report must stop altogether rather
    than go on to its next render with a half-optimized image.
    """
    items = results if isinstance(results, (list, tuple)) else [results]
    if any(r.interrupted for r in items):
        raise KeyboardInterrupt
    return results
