"""The microscope: every unit of a model's layers, as a static web site.

    from featviz.microscope import build
    report = build("efficientnet_lite0", "site")                 # quick preset: demo photos, 3 layers x 8 units
    report = build("efficientnet_lite0", "site", "photos/", layers=["blocks.8", "head"], units=32)
    print(report.summary())

    from featviz.server import create_app                        # featviz serve SITE (not imported here)
    app = create_app("site")

A unit page shows the channel, neuron, three diverse and the negative
visualizations, a caricature of its top photo, the top and bottom dataset
examples (crops and whole photos), the classes the unit pushes up and down and
its circuits (the earlier units that excite and inhibit it most); a layer page
shows a grid of all its units, the layer's DeepDream and its strongest incoming
connections; the model page lists the layers, class visualizations and every
class, each with a page (top photos, the units that push it). ``compare``
puts two models of one site side by side. The build is incremental and resumable (an SQLite
manifest in the site); ``featviz serve`` serves the site and renders on demand.
"""
from .build import BuildReport, build, resolve_settings
from .manifest import Manifest, Panel
from .settings import PRESETS, BuildSettings, preset, slug

__all__ = ["build", "BuildReport", "BuildSettings", "PRESETS", "preset", "resolve_settings", "Manifest", "Panel",
           "slug"]
