"""Rescue for renders that start dead: Lucid's "redirected ReLU", only where it is needed.

A unit behind a ReLU that is off everywhere on the grey start image gets no
gradient at all, so the optimizer never moves and the render stays grey.
``DeadStartRedirect`` watches the first step: if some image of the batch got
an exactly zero gradient, it hooks the model's ReLU / ReLU6 modules so that,
for those images only, gradients that would switch a rectifier on pass
through. It stays on while some image's objective is still exactly zero, for
at most the first half of the steps; live images keep their true gradient
throughout.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.organism import ModelOrganism


class DeadStartRedirect:
    """Install with ``start_if_dead`` after the first backward pass; ``before_step`` each step; a with-block
    (or ``remove``) takes the hooks off."""

    def __init__(self, model: ModelOrganism, steps: int):
        self.model = model
        self.last_step = steps // 2
        self.active = False
        self.steps = 0  # steps taken with redirected gradients
        self._handles: list = []

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def start_if_dead(self, parameters, batch: int) -> bool:
        """After the first backward: hook the rectifiers if some image has no gradient at all.
        True means the caller must redo the step's forward and backward, now redirected."""
        if self.installed or not _some_image_without_gradient(parameters, batch):
            return False
        # Hooks only once a dead start is found: idle hooks on every ReLU would cost a Python
        # call each per forward pass.
        for module in self.model.network.modules():
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                upper = 6.0 if isinstance(module, nn.ReLU6) else float("inf")
                self._handles.append(module.register_forward_hook(self._hook(upper)))
        self.active = True
        return True

    def before_step(self, step: int, last_values: torch.Tensor) -> None:
        """Redirect while some image's objective is still exactly zero, up to half of the steps."""
        self.active = self.installed and step <= self.last_step and bool((last_values == 0).any())

    def after_step(self) -> None:
        if self.active:
            self.steps += 1

    def _hook(self, upper: float):
        def hook(_module, inputs, _output):
            if self.active and torch.is_grad_enabled():
                return RedirectedClamp.apply(inputs[0], 0.0, upper)
            return None
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.active = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _some_image_without_gradient(parameters, batch: int) -> bool:
    """True if the gradient of some image of the batch is exactly zero (or there is none)."""
    grad = next(iter(parameters)).grad
    if grad is None:
        return True
    if grad.dim() == 0 or grad.shape[0] != batch:  # a parameterization without a batch axis
        return bool((grad == 0).all())
    return bool((grad.reshape(batch, -1).abs().sum(1) == 0).any())


class RedirectedClamp(torch.autograd.Function):
    """Clamp to [lower, upper] forward; backward also passes gradients that would move
    an input from outside the range back into it (Lucid's "redirected ReLU")."""

    @staticmethod
    def forward(ctx, x, lower, upper):
        ctx.save_for_backward(x)
        ctx.lower, ctx.upper = lower, upper
        return x.clamp(lower, upper)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        inside = (x > ctx.lower) & (x < ctx.upper)
        normal = grad * inside
        # Only where the true gradient is zero for a whole image (a dead unit) do we
        # pass the gradients that would switch it on; elsewhere the true gradient
        # stands, so live ReLUs keep their gating. grad is d(loss)/d(out): a
        # negative value asks for a larger output.
        towards = ((x <= ctx.lower) & (grad < 0)) | ((x >= ctx.upper) & (grad > 0))
        dead_rows = normal.flatten(1).abs().sum(1) == 0
        dead = dead_rows.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(dead, grad * (inside | towards), normal), None, None
