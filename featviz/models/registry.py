"""The model registry: names ``featviz.models.load`` accepts without a prefix.

Built-in organisms register themselves here; so can your code, with
``featviz.models.register(name, factory, **metadata)``, and so can any
installed package, through the ``featviz.models`` entry-point group::

    # pyproject.toml of a package that ships organisms
    [project.entry-points."featviz.models"]
    shapes_net = "shapes_pkg.nets:shapes_organism"

Each entry point's name is the model name; its object is a factory (see
``register``). Listing the names (``featviz models``) reads only the installed
packages' metadata; a factory's module is imported when the model is loaded.
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import FeatvizError, UnknownModelError, suggest
from .organism import ModelOrganism

ENTRY_POINT_GROUP = "featviz.models"

# Metadata a factory returning a bare nn.Module must come with (what ``from_module`` takes).
METADATA_KEYS = ("input_size", "mean", "std", "labels", "main_layers", "description")


@dataclass(frozen=True)
class Registered:
    """One registered model: its factory, metadata and where it came from."""

    name: str
    factory: Callable[[], Any]
    metadata: dict = field(default_factory=dict)
    source: str = "registered"  # "built-in", "registered" or "package <dist name>"

    @property
    def description(self) -> str:
        return str(self.metadata.get("description", ""))

    def create(self) -> ModelOrganism:
        """Call the factory; wrap a bare nn.Module with the registered metadata."""
        try:
            made = self.factory()
        except FeatvizError:
            raise
        except Exception as exc:
            raise FeatvizError(f"the factory of model '{self.name}' ({self.source}) failed: "
                               f"{exc.__class__.__name__}: {exc}") from None
        if isinstance(made, ModelOrganism):
            return made
        if isinstance(made, nn.Module):
            missing = [k for k in ("input_size", "mean", "std") if k not in self.metadata]
            if missing:
                raise FeatvizError(f"model '{self.name}' ({self.source}) returned a bare nn.Module but was registered "
                                   f"without {', '.join(missing)}: register it with those, or return a ModelOrganism "
                                   "(featviz.models.from_module)")
            from . import from_module

            meta = self.metadata
            return from_module(made, name=self.name, input_size=meta["input_size"], mean=meta["mean"],
                               std=meta["std"], labels=meta.get("labels"), main_layers=meta.get("main_layers"))
        raise FeatvizError(f"the factory of model '{self.name}' ({self.source}) returned "
                           f"{type(made).__name__}, not an nn.Module or ModelOrganism")


_REGISTRY: dict[str, Registered] = {}
_entry_points_read = False


def register(name: str, factory: Callable[[], Any], *, overwrite: bool = False, source: str = "registered",
             **metadata) -> None:
    """Make ``featviz.models.load(name)`` (and every CLI command) accept ``name``.

    ``factory()`` returns a ``ModelOrganism`` (normalization and labels
    included), or a bare ``nn.Module`` when ``metadata`` gives ``input_size``,
    ``mean`` and ``std`` (optionally ``labels``, ``main_layers``).
    ``description`` is shown by ``featviz models``. Names with ':' are reserved
    for the ``torchvision:`` / ``timm:`` adapters; a name ending in ``.toml`` is a spec file.
    """
    if not isinstance(name, str) or not name or ":" in name or name.endswith(".toml") or name != name.strip():
        raise FeatvizError(f"cannot register a model as {name!r}: use a plain name without ':' "
                           "(such as 'my_net')")
    if not callable(factory):
        raise FeatvizError(f"the factory of model '{name}' must be callable, got {type(factory).__name__}")
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if unknown:
        raise FeatvizError(f"unknown metadata {', '.join(unknown)} for model '{name}'; "
                           f"known: {', '.join(METADATA_KEYS)}")
    if name in _REGISTRY and not overwrite:
        raise FeatvizError(f"a model named '{name}' is already registered ({_REGISTRY[name].source}); "
                           "pass overwrite=True to replace it")
    _REGISTRY[name] = Registered(name, factory, dict(metadata), source)


def unregister(name: str) -> None:
    """Remove a model registered in this process (tests, notebooks)."""
    _REGISTRY.pop(name, None)


def _read_entry_points() -> None:
    """Register every installed package's ``featviz.models`` entry points (once; lazily imported)."""
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue  # a built-in or an explicit register() wins over a plug-in of the same name
        dist = getattr(ep, "dist", None)
        source = f"package {dist.name}" if dist is not None else f"entry point {ep.value}"
        _REGISTRY[ep.name] = Registered(ep.name, _lazy(ep), {}, source)


def refresh_entry_points() -> None:
    """Read the entry points again (after installing a package into a running process)."""
    global _entry_points_read
    for name in [n for n, r in _REGISTRY.items() if r.source.startswith(("package ", "entry point "))]:
        del _REGISTRY[name]
    _entry_points_read = False
    _read_entry_points()


def _lazy(ep) -> Callable[[], Any]:
    def factory():
        try:
            target = ep.load()
        except Exception as exc:
            raise FeatvizError(f"cannot import model '{ep.name}' from {ep.value} (entry point of group "
                               f"{ENTRY_POINT_GROUP}): {exc.__class__.__name__}: {exc}") from None
        if isinstance(target, (nn.Module, ModelOrganism)):
            return target
        if not callable(target):
            raise FeatvizError(f"entry point '{ep.name}' = {ep.value} is not callable")
        return target()
    return factory


def registered() -> dict[str, Registered]:
    """Every registered model, built-ins first, then in registration order."""
    _read_entry_points()
    return dict(_REGISTRY)


def available() -> list[str]:
    """Names ``load`` accepts without a prefix."""
    return list(registered())


def create(name: str) -> ModelOrganism:
    entry = registered().get(name)
    if entry is None:
        known = available()
        raise UnknownModelError(
            f"unknown model '{name}'.{suggest(name, known)} Known models: {', '.join(known)}; "
            "or a model spec file (my_net.toml), or 'torchvision:<name>' / 'timm:<name>' with those packages "
            "installed")
    return entry.create()
