"""Check the torchvision: adapter with random weights (no internet needed): layer table, a render, Grad-CAM.

Run in an environment where torchvision imports (see docs/models.md), from the repository root:

    python benchmarks/check_torchvision.py [ARCH ...] [--calibrate]

--calibrate sets BatchNorm statistics with one train-mode pass over random images and draws all-zero Linear
weights (torchvision's ViT head) at random, so a random network's activations and gradients are not ~0.
"""
import sys
import time

import torch

import featviz
from featviz import models
from featviz.attribution import attribute
from featviz.models.check import check_model
from skimage import data
from PIL import Image
torch.manual_seed(0)
torch.set_num_threads(2)
img = Image.fromarray(data.chelsea())
flags = [a for a in sys.argv[1:] if a.startswith("--")]
archs = [a for a in sys.argv[1:] if not a.startswith("--")] or ["vgg16", "resnet50", "googlenet", "convnext_tiny", "vit_b_16"]
for arch in archs:
    t0 = time.time()
    org = models.create_base(f"torchvision:{arch}", pretrained=False)
    if "--calibrate" in flags:
        # Random init in eval mode leaves BatchNorm's running statistics at (0, 1): activations of a deep
        # stack shrink to nothing. One pass in train mode over random images sets them, as training would.
        org.network.train()
        for m in org.network.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        with torch.no_grad():
            org.network(org.normalize(torch.rand(8, 3, org.input_size, org.input_size)))
        org.network.eval()
        # torchvision's ViT starts its head at exactly zero (a fine-tune's head would not be): then every
        # logit is 0 and every gradient too. Draw it at random instead.
        with torch.no_grad():
            for m in org.network.modules():
                if isinstance(m, torch.nn.Linear) and m.weight.abs().sum() == 0:
                    m.weight.normal_(0, 0.02)
    table = org.layers()
    spatial = [l for l in table if l.spatial]
    print(f"== torchvision:{arch}: {len(table)} main layers, {len(spatial)} spatial, input {org.input_size}, "
          f"{org.num_classes} classes, {sum(p.numel() for p in org.network.parameters())/1e6:.1f} M params")
    for l in table:
        extra = f" tokens prefix={l.prefix}" if l.layout == "tokens" else (f" {l.layout}" if l.layout != "nchw" else "")
        br = f" branches={[(b.name, b.start, b.stop) for b in l.branches]}" if l.branches else ""
        print(f"   {l.name:<34} {l.channels:>5} {l.height}x{l.width} {l.kind}{extra}{br}")
    mid = spatial[len(spatial) * 2 // 3]
    r = featviz.render(org, f"{mid.name}:{min(5, mid.channels - 1)}", size=org.input_size, steps=8, recipe="quick")
    print(f"   render {mid.name}:{min(5, mid.channels - 1)} -> {r.images.shape}, objective {r.history[0]:.4g} -> {r.history[-1]:.4g}")
    r.save(f"tv_{arch}_render.png")
    a = attribute(org, img, method="gradcam")
    print(f"   gradcam layer {a.settings['layer']}: map {tuple(a.map.shape)}, max {float(a.map.max()):.3g}, "
          f"nonzero share {float((a.map > 0).float().mean()):.2f}")
    rep = check_model(org)
    print(f"   check: output {rep.output_shape}, problems: {rep.problems}")
    print(f"   {time.time() - t0:.0f} s")
