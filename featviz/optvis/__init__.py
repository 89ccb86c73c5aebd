"""Feature visualization by optimization: objectives x parameterizations x transforms."""
from . import objectives
from .objectives import Objective, parse
from .render import RECIPES, Recipe, RenderResult, render, render_units

__all__ = ["objectives", "Objective", "parse", "render", "render_units", "RenderResult", "Recipe", "RECIPES"]
