"""Reading weights into a network: state dicts only, never code.

``read_state_dict`` takes a ``.pt``/``.pth``/``.bin`` file saved with
``torch.save`` (read with ``torch.load(weights_only=True)``, which refuses
files that need arbitrary Python objects to be rebuilt: unpickling them would
run code from the file) or a ``.safetensors`` file. A checkpoint that holds the
state dict under a common key (``state_dict``, ``model``, ``model_state_dict``...)
is unwrapped; ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile)
prefixes are dropped.

``fit_state_dict`` loads it into a network. A classifier fine-tuned for another
number of classes fits: an ``nn.Linear`` (or 1x1 ``nn.Conv2d``) whose weight in
the checkpoint differs from the network's in its number of outputs only is
replaced by one of the checkpoint's shape first. Anything else that does not
fit is reported with the first mismatched tensor names and shapes.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import FeatvizError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params",
                "model_ema", "state_dict_ema")
PREFIXES = ("module.", "_orig_mod.")
RESAVE_HINT = ("load it once in the code that made it and save only the tensors: "
               "torch.save(model.state_dict(), 'weights.pt')")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path`` (.pt/.pth/.bin or .safetensors), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FeatvizError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise FeatvizError(f"{path} is a .safetensors file, which needs the safetensors package: "
                               "pip install 'featviz[safetensors]'") from None
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own SafetensorError for damaged files
            raise FeatvizError(f"cannot read {path} as safetensors: {exc}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a page long; one line names the Python object that would need code.
        match = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if match is None:
            raise FeatvizError(f"cannot read {path} as a torch checkpoint (not a file written by torch.save, "
                               "or damaged)") from None
        reason = f"it refers to {match.group(1)}"
        raise FeatvizError(f"{path} is not a plain state dict: it needs Python code to be unpickled ({reason}), "
                           "and featviz loads checkpoints with torch.load(weights_only=True), which runs no code "
                           f"from the file; {RESAVE_HINT}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise FeatvizError(f"cannot read {path} as a torch checkpoint: {str(exc).splitlines()[0] if str(exc) else exc}"
                           ) from None
    return unwrap_state_dict(loaded, str(path))


def unwrap_state_dict(loaded, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, looked for under the common wrapper keys."""
    state = loaded
    if isinstance(state, dict) and not _all_tensors(state):
        for key in WRAPPER_KEYS:
            if isinstance(state.get(key), dict) and state[key] and _all_tensors(state[key]):
                state = state[key]
                break
    if isinstance(state, nn.Module):  # only reachable through custom safe globals
        state = state.state_dict()
    if not isinstance(state, dict) or not state or not _all_tensors(state):
        what = type(loaded).__name__
        keys = f" with keys {', '.join(map(str, list(loaded)[:6]))}" if isinstance(loaded, dict) else ""
        raise FeatvizError(f"{source} holds a {what}{keys}, not a state dict (a dict of tensors, possibly under "
                           f"'state_dict' or 'model'); {RESAVE_HINT}")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _all_tensors(d: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def resizable_heads(network: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Linear / 1x1 conv layers whose checkpoint weight differs only in the number of outputs:
    module name -> the checkpoint's number of outputs."""
    out = {}
    for name, module in network.named_modules():
        key = f"{name}.weight" if name else "weight"
        if key not in state or getattr(module, "weight", None) is None:
            continue
        theirs, ours = tuple(state[key].shape), tuple(module.weight.shape)
        if theirs == ours or len(theirs) != len(ours) or theirs[1:] != ours[1:]:
            continue
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
                                             and module.groups == 1):
            out[name] = theirs[0]
    return out


def _replace(network: nn.Module, name: str, outputs: int) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    old = getattr(parent, child)
    bias = old.bias is not None
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, outputs, bias=bias)
    else:
        new = nn.Conv2d(old.in_channels, outputs, 1, stride=old.stride, padding=old.padding, bias=bias)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    new.requires_grad_(old.weight.requires_grad)
    setattr(parent, child, new)


def fit_state_dict(network: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``network`` (in place), resizing classifier heads to the checkpoint.

    Returns the names of the resized modules. Raises one line naming the first
    tensors that do not fit (shape, missing, unexpected).
    """
    resized = resizable_heads(network, state)
    own = network.state_dict()
    # Compare as if the heads were resized already: nothing changes unless everything fits.
    expected = {k: tuple(v.shape) for k, v in own.items()}
    for name, outputs in resized.items():
        prefix = f"{name}." if name else ""
        for key in (f"{prefix}weight", f"{prefix}bias"):
            if key in expected:
                expected[key] = (outputs, *expected[key][1:])
    state = dict(state)
    for key in own:  # checkpoints from older torch versions lack BatchNorm's counter; it changes nothing
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    shapes = [f"{k}: checkpoint {list(v.shape)}, network {list(expected[k])}"
              for k, v in state.items() if k in own and tuple(v.shape) != expected[k]]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if shapes or missing or unexpected:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} with other shapes ({'; '.join(shapes[:3])}{'; ...' if len(shapes) > 3 else ''})")
        if missing:
            parts.append(f"{len(missing)} missing from the checkpoint ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the network ({_first(unexpected)})")
        raise FeatvizError(f"the weights in {source} do not fit the network: {len(own)} tensors expected, "
                           f"{', '.join(parts)}")
    for name, outputs in resized.items():
        _replace(network, name, outputs)
    with torch.no_grad():
        network.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return list(resized)


def _first(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
