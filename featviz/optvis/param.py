"""Image parameterizations: how the optimizer's variables become an image.

Each parameterization is an ``nn.Module`` whose ``forward()`` returns a batch
of images in [0, 1], shape (N, 3, H, W) or (N, 4, H, W) with alpha. The
choice matters as much as the objective: optimizing raw pixels gives
high-frequency adversarial noise, while a frequency-scaled Fourier basis and
decorrelated colours precondition the problem towards natural images.

The colour and spectrum constants below were measured by
``scripts/imagenet_colour_stats.py`` on 1000 ImageNet photos (resize 256,
centre crop 224).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FeatvizError

# Square root of the RGB covariance of ImageNet pixels (U * sqrt(S) of its SVD).
# Columns are colour directions: luminance first, then two chroma axes.
COLOUR_SQRT_COV = torch.tensor([[-0.2514, 0.0987, 0.0257],
                                [-0.2586, -0.0035, -0.0544],
                                [-0.2580, -0.0926, 0.0295]])
# Scale so the largest colour direction has unit norm: a unit step of the
# optimizer in any direction moves pixels by comparable amounts.
COLOUR_MATRIX = COLOUR_SQRT_COV / COLOUR_SQRT_COV.norm(dim=0).max()

# Mean amplitude spectrum of ImageNet photos (per channel, ortho-normalised
# FFT at 224 px): amplitude ≈ A / (frequency * 224) ** ALPHA, fitted on the
# measured radial profile (A ≈ 13.3, ALPHA ≈ 1.30).
SPECTRUM_A = 13.3
SPECTRUM_ALPHA = 1.30


def _frequencies(h: int, w: int, device=None) -> torch.Tensor:
    """Radial frequency (cycles per pixel) of each rfft2 coefficient, shape (h, w//2+1)."""
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def _randn(shape, generator: torch.Generator, device, sd: float) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device) * sd


def _to_logit(image: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.logit(image.clamp(eps, 1 - eps))


class ImageParam(nn.Module):
    """Base: subclasses produce unconstrained "pre-image" values ``raw()``; this
    class maps them through colour decorrelation and a sigmoid to [0, 1]."""

    def __init__(self, batch: int, size: tuple[int, int], decorrelate: bool, alpha: bool, chroma: float = 1.0):
        super().__init__()
        if batch < 1:
            raise FeatvizError("batch must be at least 1")
        if min(size) < 8:
            raise FeatvizError(f"image size must be at least 8 px, got {size}")
        if not (isinstance(chroma, (int, float)) and not isinstance(chroma, bool) and 0 < chroma <= 10):
            raise FeatvizError(f"chroma must be a number in (0, 10], got {chroma!r}")
        self.batch, self.size, self.decorrelate, self.alpha = batch, tuple(size), decorrelate, alpha
        self.channels = 4 if alpha else 3
        colour = COLOUR_MATRIX.clone()
        # ImageNet's chroma directions carry a tenth of the luminance's variance, so with the measured matrix an
        # optimizer step moves colour far less than brightness and images come out greyer than photos.
        # ``chroma`` > 1 lengthens the two colour-difference directions (luminance unchanged).
        colour[:, 1:] *= chroma
        self.register_buffer("colour", colour, persistent=False)

    def raw(self) -> torch.Tensor:  # (N, C, H, W), unconstrained
        raise NotImplementedError

    def forward(self) -> torch.Tensor:
        x = self.raw()
        rgb = x[:, :3]
        if self.decorrelate:  # the 3x3 colour matrix on every pixel (matmul: no equation to parse per step)
            rgb = torch.matmul(self.colour, rgb.reshape(rgb.shape[0], 3, -1)).view(rgb.shape)
        out = torch.sigmoid(rgb)
        if self.alpha:
            out = torch.cat([out, torch.sigmoid(x[:, 3:])], 1)
        return out

    def _raw_from_image(self, image: torch.Tensor) -> torch.Tensor:
        """Inverse of forward for initialising from a photo (N or 1, 3, H, W) in [0, 1]."""
        if image.dim() == 3:
            image = image[None]
        if image.shape[1] != 3:
            raise FeatvizError(f"initial image must be RGB, got {image.shape[1]} channels")
        image = F.interpolate(image.float(), size=self.size, mode="bilinear", align_corners=False, antialias=True)
        image = image.expand(self.batch, -1, -1, -1)
        raw = _to_logit(image)
        if self.decorrelate:
            raw = torch.einsum("ij,njhw->nihw", torch.linalg.inv(self.colour.to(raw.device)), raw)
        if self.alpha:
            raw = torch.cat([raw, torch.full_like(raw[:, :1], 3.0)], 1)  # start opaque
        return raw


class PixelParam(ImageParam):
    """One free variable per pixel and channel."""

    def __init__(self, batch=1, size=(128, 128), *, decorrelate=True, alpha=False, sd=0.01,
                 generator: torch.Generator | None = None, device=None, init: torch.Tensor | None = None,
                 chroma: float = 1.0):
        super().__init__(batch, size, decorrelate, alpha, chroma)
        if init is not None:
            value = self._raw_from_image(init.to(device))
        else:
            value = _randn((batch, self.channels, *self.size), generator, device, sd)
        self.pixels = nn.Parameter(value)

    def raw(self):
        return self.pixels


class FourierParam(ImageParam):
    """Spectrum coefficients scaled by 1 / frequency**decay, so that low
    frequencies (large structures) move as easily as high ones (Lucid's recipe)."""

    def __init__(self, batch=1, size=(128, 128), *, decorrelate=True, alpha=False, sd=0.01, decay=1.0,
                 generator: torch.Generator | None = None, device=None, init: torch.Tensor | None = None,
                 chroma: float = 1.0):
        super().__init__(batch, size, decorrelate, alpha, chroma)
        h, w = self.size
        freqs = _frequencies(h, w, device)
        # With an orthonormal FFT and Adam (whose steps are ~lr per variable),
        # this scale and the /4 below make lr=0.05 move the image as in Lucid.
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay
        self.register_buffer("scale", scale, persistent=False)
        # The same map with the orthonormal FFT's 1/sqrt(HW) and the /4 folded in, so that each step
        # runs one multiply and an unnormalised inverse FFT (fewer passes over the image).
        self.register_buffer("synthesis", scale / (4.0 * math.sqrt(h * w)), persistent=False)
        if init is not None:
            spatial = self._raw_from_image(init.to(device))
            spectrum = torch.fft.rfft2(spatial * 4.0, norm="ortho") / self.scale
            value = torch.view_as_real(spectrum)
        else:
            value = _randn((batch, self.channels, h, w // 2 + 1, 2), generator, device, sd)
        self.spectrum = nn.Parameter(value)

    def raw(self):
        return torch.fft.irfft2(torch.view_as_complex(self.spectrum) * self.synthesis, s=self.size, norm="forward")


class MacoParam(ImageParam):
    """Magnitude-constrained parameterization (MACO): the amplitude of each
    frequency is fixed to the mean ImageNet spectrum; only the phase (and the
    mean colour) is optimized. Images keep natural frequency statistics, which
    helps on deeper networks where Fourier-only images drift to textures."""

    def __init__(self, batch=1, size=(128, 128), *, decorrelate=True, alpha=False, sd=0.01,
                 generator: torch.Generator | None = None, device=None, init: torch.Tensor | None = None,
                 contrast: float = 1.0, chroma: float = 1.0):
        super().__init__(batch, size, decorrelate, alpha, chroma)
        if init is not None:
            raise FeatvizError("the 'maco' parameterization cannot start from a photo; use 'fourier' or 'pixel'")
        h, w = self.size
        freqs = _frequencies(h, w, device) * math.sqrt(h * w)  # cycles per image
        amp = SPECTRUM_A / torch.clamp(freqs, min=1.0) ** SPECTRUM_ALPHA
        amp[0, 0] = 0.0  # the mean is a free parameter of its own
        # The measured amplitudes are for [0,1] pixels; in logit space (sigmoid
        # slope 1/4 at 0.5) and after the colour matrix, a scale of ~4 keeps the
        # same contrast. ``contrast`` lets users make it livelier.
        amp = amp * 4.0 * contrast * math.sqrt(h * w / 224.0**2)
        self.register_buffer("amplitude", amp, persistent=False)
        phase = torch.rand((batch, self.channels, h, w // 2 + 1), generator=generator, device=device) * 2 * math.pi
        self.phase = nn.Parameter(phase - math.pi)
        self.mean = nn.Parameter(_randn((batch, self.channels, 1, 1), generator, device, sd))

    def raw(self):
        spectrum = torch.polar(self.amplitude.expand_as(self.phase), self.phase)
        return torch.fft.irfft2(spectrum, s=self.size, norm="ortho") + self.mean


PARAMETERIZATIONS = {"pixel": PixelParam, "fourier": FourierParam, "maco": MacoParam}


def make_param(kind: str, batch: int, size: int | tuple[int, int], *, generator, device, decorrelate=True,
               alpha=False, init=None, **kwargs) -> ImageParam:
    if isinstance(size, int):
        size = (size, size)
    if kind not in PARAMETERIZATIONS:
        raise FeatvizError(f"unknown parameterization '{kind}': choose one of {', '.join(PARAMETERIZATIONS)}")
    return PARAMETERIZATIONS[kind](batch, size, decorrelate=decorrelate, alpha=alpha, generator=generator,
                                   device=device, init=init, **kwargs)
