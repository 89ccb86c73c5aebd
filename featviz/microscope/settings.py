"""What a microscope build makes, and the hashes that say when a panel must be made again.

Two presets: ``quick`` (a newcomer's first look: 3 layers x 8 units, 64 steps at
96 px, the embedded demo photos) and ``full`` (6 layers spanning the depth,
every unit, 256 steps at 128 px (channel images 192), 16 units per render batch). Both use the ``auto`` recipe: view-robust
random zoom for units (images that keep their activation when the page shows
them at another size), the multi-crop ``classes`` recipe for class images. Any field can be overridden.

Every panel of the site (a unit's channel visualization, its dataset examples, a
layer's DeepDream...) has a *settings hash*: a digest of exactly what its
content depends on. The manifest records the hash each panel was made with, so
a rebuild skips panels whose hash is unchanged and remakes only the others.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Sequence

from .. import names
from ..errors import FeatvizError

FORMAT = 1  # bump when the meaning of a hash changes

# Kinds of unit panel rendered by optimization (the engine's batched kinds + diversity).
RENDER_KINDS = ("channel", "neuron", "negative")
DIVERSITY = "diversity"
EXAMPLES = "examples"
CLASSES = "classes"
CIRCUITS = "circuits"      # the units of an earlier layer that excite / inhibit a unit most
CARICATURE = "caricature"  # a unit's top photo, exaggerated (a layer panel when the build is given a photo)
UNIT_PANELS = RENDER_KINDS + (DIVERSITY, EXAMPLES, CLASSES, CIRCUITS, CARICATURE)
DREAM = "dream"        # layer panel
CLASS_VIS = "class"    # model panel, one per class
CLASS_PHOTOS = "class_photos"  # model panel: each class's top photos by its logit
CLASS_UNITS = "class_units"    # model panel per layer: the units that push each class most
COMPARE = "compare:"           # model panel prefix: compare:<other model's slug>
BASELINE_CKA = "baseline_cka"  # model panel: CKA by depth to the starting network (``baseline.py``)

# Folder and file names the site uses for itself (never a model or layer folder).
STATIC_DIR = "static"
API_PREFIX = "api"
LIVE_DIR = "_live"
EXAMPLES_DIR = "_examples"
CLASSES_DIR = "_classes"
CLASS_PAGES_DIR = "classes"
COMPARE_DIR = "_compare"
MANIFEST_NAME = "manifest.sqlite"
RESERVED = {STATIC_DIR, API_PREFIX, LIVE_DIR, "index.html", MANIFEST_NAME, CLASS_PAGES_DIR}


@dataclass(frozen=True)
class BuildSettings:
    """Settings of a build. ``None`` fields take the preset's value (see ``resolve``).

    layers: layer names (None: a set spanning the depth). units: per layer, None for
    every unit, an int N for units 0..N-1, or a list of unit indices.
    steps, size, recipe: of every visualization. batch_size: units per render batch.
    diversity: weight of the diversity term, relative to the unit's own activation;
    diversity_images: images per unit; diversity_batch: units per diversity batch;
    diversity_size: side of the diversity images (None: size).
    k: dataset examples per list (top by mean, top by max with crops, bottom by mean).
    examples_size: input size of the examples pass (None: the model's).
    classes: classes visualized on the model page (None: a default set).
    class_size / dream_size: sides of those images (None: size * 3 // 2).
    seed: base of every per-batch seed.
    circuit_units: units listed as exciting and as inhibiting on a circuits panel.
    caricature_photo: a photo to caricature on every layer (None: each unit's top dataset example);
    caricature_steps, negative_steps, channel_steps: steps of a caricature, of a negative image, of a channel
    image, at most ``steps`` (None: steps).
    window_panels: panels whose unit renders see windows only (recipe ``robust-windows``) when recipe is ``auto``.
    plateau, plateau_share, diversity_plateau: when a render batch stops early (``Recipe.plateau``).
    """

    preset: str = "full"
    layers: tuple[str, ...] | None = None
    n_layers: int = 6
    units: int | tuple[int, ...] | None = None
    steps: int = 256
    size: int = 128
    recipe: str = "auto"
    # 16 images per optimization: on this 2-core CPU a whole 16-unit render costs per unit 0.6-0.75x a 32-unit one
    # (deep layers at 128 px; the working set of 32 images falls out of the cache; docs/microscope.md). A GPU wants
    # more (``--batch-size``).
    batch_size: int = 16
    diversity: float = 1.0
    # Three images beside the channel image: with the channel image they show four solutions for the unit,
    # and a fourth diverse image was a quarter of the build's largest panel (docs/microscope.md).
    diversity_images: int = 3
    # 4 units x 3 images = 12 rows per optimization, for the same reason (head: 0.7x the time of 8 units x 3).
    diversity_batch: int = 4
    # The unit page shows each diversity image at 120 CSS px, so a 96 px render is seen at 1.25x, inside the
    # magnifications the unit recipe is robust to; it costs (96/128)^2 = 0.56 of a 128 px one, and diversity is
    # the build's largest panel (benchmarks/bench_microscope_slice.py measures both the time and the images).
    diversity_size: int | None = 96
    k: int = 10
    examples_size: int | None = None
    classes: tuple[int, ...] | None = None
    n_classes: int = 12
    class_size: int | None = None
    dream_size: int | None = None
    seed: int = 0
    top_classes: int = 5
    circuit_units: int = 6
    caricature_photo: str | None = None
    # A caricature starts from a photo, not from noise, and half the steps give most of its exaggeration: on
    # lite0's head, 1.31x the photo's own activation along its direction at step 128 against 1.36x at 256.
    caricature_steps: int | None = 128
    # A negative image only has to turn its unit off, and half the steps do: on lite0's head 128 steps lower the
    # view-robust pre-activation to 0.89x what 256 do (median -27.3 against -30.8 over 8 units), the same picture
    # a little less saturated. Negatives never reach a plateau (a pre-activation has no floor), so this is their stop.
    negative_steps: int | None = 128
    # The channel image, the unit's headline, uses the unit recipe as it is (``robust``: half its steps see the
    # whole image at its own size); those steps cost 1.78x a window's, so it runs 192 steps, about the time 256
    # windows-only steps took, for a view-robust median of 4.34 against 3.93 on the benchmark units (stop 21).
    channel_steps: int | None = 192
    # Panels whose unit renders see windows only (``robust-windows``) when the recipe is ``auto``: whole-image
    # steps would add about a third to these panels' time, and the full build is timed to 2 hours.
    window_panels: tuple[str, ...] = ("negative", DIVERSITY, CARICATURE)
    # Unit renders stop once no image of the batch gains more than this fraction over 32 steps (``Recipe.plateau``;
    # 0 or None: every step): units behind ReLU6 (lite0's head) reach the ceiling of 6, and their negatives 0, by
    # step 100-150 of 256; units of unbounded layers keep rising and run every step.
    plateau: float | None = 0.01
    # ... once this share of the batch's images has levelled off; the images still rising then continue alone
    # for the steps left (``visuals.render_kind``), so the slowest units no longer hold up the whole batch.
    plateau_share: float = 0.9
    # The diversity images stop at a looser plateau: on lite0's head their activation reaches the ReLU6 ceiling
    # and their Gram cosines fall below 0.04 by step ~100, and the last 150 steps only polish cosines already near
    # 0 (0.013 against 0.009 at 0.01, the same activation); units of unbounded layers keep rising past 3 % and run on.
    diversity_plateau: float | None = 0.03

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "full": BuildSettings(),
    "quick": BuildSettings(preset="quick", n_layers=3, units=8, steps=64, size=96, recipe="auto", batch_size=8,
                           diversity_batch=4, diversity_size=None, k=6, n_classes=4, plateau=None,
                           diversity_plateau=None, caricature_steps=None, negative_steps=None, channel_steps=None,
                           window_panels=()),
}

# Classes shown on the model page of an ImageNet model when none are given: recognizable ones first.
IMAGENET_SHOWCASE = (309, 1, 130, 207, 281, 291, 340, 417, 508, 717, 954, 980)


def preset(name: str, **overrides) -> BuildSettings:
    if name not in PRESETS:
        raise FeatvizError(f"unknown preset {name!r}: quick or full")
    clean = {k: v for k, v in overrides.items() if v is not None}
    for key in ("layers", "classes"):
        if isinstance(clean.get(key), (list, str)):
            value = clean[key]
            clean[key] = tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) \
                else tuple(value)
            if isinstance(value, str) and not clean[key]:
                raise FeatvizError(f"no {key} named in {value!r}; give a comma-separated list")
    if clean.get("layers") == ():
        # an empty list is a mistake, not a request for the default layers (that is None)
        raise FeatvizError("no layers given; 'featviz layers MODEL' lists them")
    if isinstance(clean.get("units"), list):
        clean["units"] = tuple(clean["units"])
    if clean.get("units") == "all":
        clean["units"] = None  # every unit
    try:
        s = replace(PRESETS[name], **clean)
    except TypeError as exc:
        raise FeatvizError(f"unknown build setting: {exc}") from None
    check(s)
    return s


def check(s: BuildSettings) -> None:
    if not 1 <= s.steps <= 100_000:
        raise FeatvizError(f"steps must be between 1 and 100000, got {s.steps}")
    if not 16 <= s.size <= 4096:
        raise FeatvizError(f"size must be between 16 and 4096 px, got {s.size}")
    if s.batch_size < 1 or s.diversity_batch < 1:
        raise FeatvizError("batch sizes must be at least 1")
    if s.diversity_images < 2:
        raise FeatvizError("diversity needs at least 2 images per unit")
    for name in ("plateau", "diversity_plateau"):
        value = getattr(s, name)
        if value is not None and not 0 <= value < 1:
            raise FeatvizError(f"{name.replace('_', ' ')} must be a fraction in [0, 1), got {value}")
    if s.diversity_size is not None and not 16 <= s.diversity_size <= 4096:
        raise FeatvizError(f"diversity size must be between 16 and 4096 px, got {s.diversity_size}")
    if not 0 < s.plateau_share <= 1:
        raise FeatvizError(f"plateau share must be in (0, 1], got {s.plateau_share}")
    unknown = set(s.window_panels) - {"channel", "negative", DIVERSITY, CARICATURE}
    if unknown:
        raise FeatvizError(f"window panels must be among channel, negative, {DIVERSITY}, {CARICATURE}; "
                           f"got {', '.join(sorted(map(str, unknown)))}")
    for name in ("caricature_steps", "negative_steps", "channel_steps"):
        value = getattr(s, name)
        if value is not None and not 1 <= value <= 100_000:
            raise FeatvizError(f"{name.replace('_', ' ')} must be between 1 and 100000, got {value}")
    if s.k < 1:
        raise FeatvizError(f"k (dataset examples per list) must be at least 1, got {s.k}")
    if isinstance(s.units, int) and s.units < 1:
        raise FeatvizError(f"units must be at least 1, got {s.units}")


def choose_layers(model, s: BuildSettings) -> list[str]:
    if not s.layers:
        return model.default_layers(s.n_layers)
    names = list(dict.fromkeys(s.layers))
    for name in names:
        info = model.layer(name)
        if not info.spatial:
            raise FeatvizError(f"layer '{name}' has no spatial dimensions; the microscope shows convolutional "
                               "layers (the classes are shown on the model page)")
    order = {info.name: info.order for info in model.layers(all_modules=True)}
    return sorted(names, key=lambda n: order.get(n, 0))


def choose_units(model, layer: str, s: BuildSettings) -> list[int]:
    channels = model.layer(layer).channels
    if s.units is None:
        return list(range(channels))
    if isinstance(s.units, int):
        return list(range(min(s.units, channels)))
    units = sorted(dict.fromkeys(int(u) for u in s.units))
    for u in units:
        model.check_channel(layer, u)
    return units


def choose_classes(model, s: BuildSettings) -> list[int]:
    n = model.num_classes
    if not n:
        return []
    if s.classes is not None:
        return [model.check_class(int(c)) for c in s.classes]
    if n == 1000:
        return list(IMAGENET_SHOWCASE[:s.n_classes])
    return list(range(min(n, s.n_classes)))


# -- hashing -------------------------------------------------------------------------------------
def digest(obj) -> str:
    """A short stable digest of plain data."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def render_params(s: BuildSettings) -> dict:
    """The render settings of a unit panel, as ``render`` takes them (and as its hash reads them)."""
    params = {"steps": s.steps, "size": s.size, "recipe": s.recipe}
    if s.plateau:  # absent when off (0 or None), so the hashes of builds made before it existed still hold
        params["plateau"] = s.plateau
        params["plateau_share"] = s.plateau_share
    return params


def panel_settings(kind: str, s: BuildSettings, model_id: dict, extra: dict | None = None) -> dict:
    """The plain-data settings a panel depends on (its hash is ``digest`` of this)."""
    base = {"format": FORMAT, "panel": kind, "model": model_id}
    if kind in RENDER_KINDS:
        base |= kind_params(kind, s) | {"batch_size": s.batch_size, "seed": s.seed}
    elif kind == DIVERSITY:
        base |= diversity_params(s) | {"weight": s.diversity, "images": s.diversity_images,
                                       "batch_size": s.diversity_batch, "seed": s.seed}
    elif kind == DREAM:
        base |= {"steps": s.steps, "recipe": s.recipe, "size": s.dream_size or s.size * 3 // 2, "seed": s.seed}
    elif kind == CLASS_VIS:
        base |= {"steps": s.steps, "recipe": s.recipe, "size": s.class_size or s.size * 3 // 2, "seed": s.seed}
    elif kind == CLASSES:
        base |= {"top": s.top_classes}
    elif kind == CIRCUITS:
        base |= {"top": s.circuit_units}
    elif kind == CARICATURE:
        base |= caricature_params(s) | {"batch_size": s.batch_size, "seed": s.seed}
    if extra:
        base |= extra
    return base


def kind_params(kind: str, s: BuildSettings) -> dict:
    """``render_params`` of a channel, neuron or negative panel: a channel and a negative run their own steps (at
    most the build's), and a panel in ``window_panels`` its windows-only recipe."""
    params = render_params(s)
    if kind == "negative":
        params["steps"] = _own_steps(s.negative_steps, s)
    if kind == "channel":
        params["steps"] = _own_steps(s.channel_steps, s)
    return params | _window_recipe(kind, s)


def _own_steps(steps: int | None, s: BuildSettings) -> int:
    """A panel's own step count (``None``: the build's), never more than the build's ``steps``."""
    return min(steps or s.steps, s.steps)


def diversity_params(s: BuildSettings) -> dict:
    """``render_params`` of the diversity images, at their own size and plateau."""
    params = render_params(replace(s, plateau=s.diversity_plateau)) | {"size": s.diversity_size or s.size}
    return params | _window_recipe(DIVERSITY, s)


def _window_recipe(panel: str, s: BuildSettings) -> dict:
    """The recipe override of a panel in ``s.window_panels`` (only for the ``auto`` recipe: a recipe the user
    names is used as named)."""
    return {"recipe": "robust-windows"} if s.recipe == "auto" and panel in s.window_panels else {}


def caricature_params(s: BuildSettings) -> dict:
    """``render_params`` of a caricature: its own steps (at most the build's), and no plateau stop, because a
    caricature keeps exaggerating (slowly) to the last step."""
    params = {k: v for k, v in render_params(s).items() if k not in ("plateau", "plateau_share")}
    return params | {"steps": _own_steps(s.caricature_steps, s)} | _window_recipe(CARICATURE, s)


def batch_seed(settings_hash: str, *parts) -> int:
    """A seed derived from a panel's settings and its batch (e.g. the layer and first unit)."""
    h = hashlib.sha256(("|".join([settings_hash, *map(str, parts)])).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


# -- names in the site -------------------------------------------------------------------------------
# A model's or layer's folder in the site: the project's one slug rule, kept clear of the site's own names.
slug = partial(names.slug, reserved=frozenset(RESERVED))


def chunks(items: Sequence, size: int) -> list[list]:
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]
