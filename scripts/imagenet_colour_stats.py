"""Measure the colour and spectrum statistics featviz's parameterizations use.

Run once over a folder of ImageNet photos (we used the 1000 photos of
../shared/imagenet-samples, resize 256 / centre crop 224) and paste the printed
constants into featviz/optvis/param.py:

- the square root of the RGB covariance of pixel values (for colour
  decorrelation: the optimizer works in a whitened colour space);
- the mean amplitude spectrum of the photos as a radial profile per colour
  channel (for magnitude-constrained, MACO-style parameterization).
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featviz.models import load  # noqa: E402

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/imagenet-samples")
files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
model = load("efficientnet_lite0")
pix = []
spectra = []
size = 224
fy = np.fft.fftfreq(size)[:, None]
fx = np.fft.rfftfreq(size)[None, :]
radius = np.sqrt(fx**2 + fy**2)
bins = np.minimum((radius * size).round().astype(int), size // 2)
nbins = size // 2 + 1
for f in files:
    x = model.preprocess(f, size).numpy()  # (3, H, W) in [0, 1]
    pix.append(x.reshape(3, -1)[:, ::7])
    amp = np.abs(np.fft.rfft2(x - x.mean(axis=(1, 2), keepdims=True), norm="ortho"))
    spectra.append(np.stack([np.bincount(bins.ravel(), amp[c].ravel(), nbins) / np.bincount(bins.ravel(), None, nbins)
                             for c in range(3)]))
pix = np.concatenate(pix, axis=1)
cov = np.cov(pix)
u, s, _ = np.linalg.svd(cov)
sqrt_cov = u @ np.diag(np.sqrt(s))
print(f"{len(files)} photos")
print("mean RGB", np.round(pix.mean(1), 4).tolist())
print("COLOUR_SQRT_COV =", np.round(sqrt_cov, 4).tolist())
profile = np.mean(spectra, axis=0)
print("radial amplitude profile (per channel, index = frequency * size, size 224):")
print("SPECTRUM_PROFILE =", np.round(profile, 5).tolist())
