"""featviz: see what the units of a vision network have learned.

    import featviz
    model = featviz.load("efficientnet_lite0")
    featviz.render(model, "blocks.8:12", size=128).pil()
"""
from .errors import FeatvizError
from .models import load
from .optvis import objectives, render, render_units
from .optvis.objectives import channel, deepdream, direction, diversity, logit, neuron, probability

__all__ = ["load", "render", "render_units", "objectives", "channel", "neuron", "deepdream", "logit", "probability",
           "direction", "diversity", "FeatvizError"]
__version__ = "0.1.0"
