"""Model specs: a TOML file that says everything featviz needs to use a network.

    name = "shapes-lite0"               # optional; default: the file's stem
    base = "efficientnet_lite0"         # a registered name, "torchvision:<arch>" or "timm:<arch>"
    # factory = "nets.py:build"         # ...or "package.module:function" / "file.py:function" -> nn.Module
    weights = "checkpoints/final.pt"    # optional state dict (.pt/.pth/.bin, or .safetensors)
    pretrained = false                  # optional, torchvision:/timm: bases only: build without
                                        # downloading weights (random init unless `weights` is given)
    mean = [0.5, 0.5, 0.5]              # after scaling RGB to [0, 1]; required with factory
    std = [0.5, 0.5, 0.5]
    input_size = 224                    # required with factory
    labels = "labels.txt"               # one class per line, a JSON list file, or an inline list
    layers = ["stem", "blocks.4"]       # optional main layers

Paths are relative to the spec's folder. The classifier's size comes from the
checkpoint (see ``checkpoint.fit_state_dict``). Every mistake is one line
naming the spec and what is wrong.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import FeatvizError, suggest
from .checkpoint import fit_state_dict, read_state_dict
from .organism import ModelOrganism

KEYS = ("name", "base", "factory", "weights", "pretrained", "mean", "std", "input_size", "labels", "layers")


def is_spec_path(name) -> bool:
    return isinstance(name, (str, os.PathLike)) and str(name).endswith(".toml")


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The spec's keys, checked for unknown names and types (paths not yet resolved)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise FeatvizError(f"model spec not found: {path}")
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise FeatvizError(f"{path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatvizError(f"cannot read model spec {path}: {exc}") from None
    for key in spec:
        if key not in KEYS:
            raise FeatvizError(f"{path}: unknown key '{key}'.{suggest(key, KEYS)} Keys: {', '.join(KEYS)}")
    if "base" in spec and "factory" in spec:
        raise FeatvizError(f"{path}: give either 'base' or 'factory', not both")
    if "base" not in spec and "factory" not in spec:
        raise FeatvizError(f"{path}: missing key 'base' (a model name such as efficientnet_lite0 or "
                           "torchvision:resnet50) or 'factory' (such as 'nets.py:build')")
    if "factory" in spec:
        missing = [k for k in ("mean", "std", "input_size") if k not in spec]
        if missing:
            raise FeatvizError(f"{path}: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                               "(required with 'factory': what the network expects after scaling RGB to [0, 1], "
                               "and its input side in pixels)")
    types = {"name": str, "base": str, "factory": str, "weights": str, "pretrained": bool, "input_size": int,
             "mean": list, "std": list, "labels": (str, list), "layers": list}
    for key, kind in types.items():
        if key in spec and (not isinstance(spec[key], kind) or (kind is int and isinstance(spec[key], bool))):
            want = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
            raise FeatvizError(f"{path}: '{key}' must be a {want.replace('str', 'string')}, "
                               f"got {spec[key]!r}")
    for key in ("mean", "std"):
        if key in spec:
            values = spec[key]
            if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise FeatvizError(f"{path}: '{key}' needs 3 numbers (one per RGB channel, for input scaled to "
                                   f"[0, 1]), got {values!r}")
    if "std" in spec and any(v <= 0 for v in spec["std"]):
        raise FeatvizError(f"{path}: 'std' values must be positive, got {spec['std']!r}")
    if "input_size" in spec and not 8 <= spec["input_size"] <= 8192:
        raise FeatvizError(f"{path}: 'input_size' must be a side in pixels (8-8192), got {spec['input_size']}")
    if "layers" in spec and not all(isinstance(l, str) for l in spec["layers"]):
        raise FeatvizError(f"{path}: 'layers' must be a list of layer names, got {spec['layers']!r}")
    if "pretrained" in spec and "base" in spec and not spec["base"].startswith(("torchvision:", "timm:")):
        raise FeatvizError(f"{path}: 'pretrained' applies to torchvision:/timm: bases only")
    return spec


def load_spec(path: str | os.PathLike, weights: str | os.PathLike | None = None) -> ModelOrganism:
    """Build the organism a spec describes; ``weights`` overrides the spec's own."""
    from . import create_base

    path = Path(path)
    spec = read_spec(path)
    folder = path.resolve().parent
    name = spec.get("name", path.stem)
    weights_path = Path(weights) if weights is not None else (folder / spec["weights"] if "weights" in spec else None)
    if "base" in spec:
        pretrained = spec.get("pretrained", True) and weights_path is None
        base = create_base(spec["base"], pretrained=pretrained, where=str(path))
        network = base.network
        defaults = dict(input_size=base.input_size, mean=base.mean.flatten().tolist(),
                        std=base.std.flatten().tolist(), labels=base.labels,
                        main_layers=base.main_layer_names, channels_last=base.channels_last)
    else:
        network = call_factory(spec["factory"], folder, str(path))
        defaults = dict(labels=None, main_layers=None, channels_last=False)
    resized: list[str] = []
    if weights_path is not None:
        try:
            resized = fit_state_dict(network, read_state_dict(weights_path), str(weights_path))
        except FeatvizError as exc:
            raise FeatvizError(f"{path}: {exc}") from None
    labels = read_labels(spec["labels"], folder, str(path)) if "labels" in spec else defaults["labels"]
    organism = ModelOrganism(network, name, spec.get("input_size", defaults.get("input_size")),
                             spec.get("mean", defaults.get("mean")), spec.get("std", defaults.get("std")),
                             main_layers=spec.get("layers", defaults["main_layers"]),
                             channels_last=defaults["channels_last"])
    organism.source = str(path.resolve())
    organism.weights_file = str(weights_path.resolve()) if weights_path is not None else None
    outputs = organism.output_features()
    if "labels" in spec:
        if outputs is not None and len(labels) != outputs:
            raise FeatvizError(f"{path}: {len(labels)} labels but the classifier has {outputs} outputs"
                               + (f" (its head {', '.join(resized)} was sized from the checkpoint)" if resized else ""))
    elif labels is not None and outputs is not None and len(labels) != outputs:
        labels = None  # a fine-tuned head: the base's class names no longer apply; classes are numbered
    organism.labels = list(labels) if labels is not None else None
    if "layers" in spec:
        for layer in spec["layers"]:
            try:
                organism.layer(layer)
            except FeatvizError as exc:
                raise FeatvizError(f"{path}: in 'layers': {exc}") from None
    return organism


def read_labels(value, folder: Path, where: str) -> list[str]:
    """Class names from an inline list, a JSON list file or a text file (one per line)."""
    if isinstance(value, list):
        labels = value
    else:
        file = folder / value
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise FeatvizError(f"{where}: cannot read labels file {file}: {exc.strerror or exc}") from None
        if file.suffix == ".json":
            try:
                labels = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FeatvizError(f"{where}: labels file {file} is not valid JSON: {exc}") from None
            if isinstance(labels, dict):  # {"0": "cat", "1": "dog"} as some exports write it
                try:
                    labels = [labels[k] for k in sorted(labels, key=int)]
                except ValueError:
                    raise FeatvizError(f"{where}: labels file {file} must hold a list of names") from None
        else:
            labels = [line.strip() for line in text.splitlines()]
            while labels and not labels[-1]:
                labels.pop()
    if not isinstance(labels, list) or not labels or not all(isinstance(l, str) for l in labels):
        raise FeatvizError(f"{where}: labels must be a non-empty list of class names")
    return labels


def call_factory(target: str, folder: Path, where: str) -> nn.Module:
    """Import ``package.module:function`` or ``file.py:function`` (relative to ``folder``) and call it."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise FeatvizError(f"{where}: factory must look like 'package.module:function' or 'nets.py:function', "
                           f"got {target!r}")
    if module_name.endswith(".py"):
        file = (folder / module_name).resolve()
        if not file.is_file():
            raise FeatvizError(f"{where}: factory file not found: {file}")
        unique = f"featviz_spec_{abs(hash(str(file)))}_{file.stem}"
        module_spec = importlib.util.spec_from_file_location(unique, file)
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(file.parent))  # so the file can import its neighbours
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise FeatvizError(f"{where}: cannot import the factory file {file}: {exc.__class__.__name__}: {exc}"
                               ) from None
        finally:
            sys.path.remove(str(file.parent))
    else:
        sys.path.insert(0, str(folder))
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise FeatvizError(f"{where}: cannot import module '{module_name}' for the factory: "
                               f"{exc.__class__.__name__}: {exc}") from None
        finally:
            sys.path.remove(str(folder))
    function = getattr(module, attr, None)
    if function is None:
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise FeatvizError(f"{where}: {module_name} has no '{attr}'.{suggest(attr, public)}")
    if not callable(function):
        raise FeatvizError(f"{where}: {module_name}:{attr} is not callable")
    try:
        network = function()
    except Exception as exc:
        raise FeatvizError(f"{where}: the factory {target} failed: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(network, nn.Module):
        raise FeatvizError(f"{where}: the factory {target} returned {type(network).__name__}, not an nn.Module")
    return network
