"""Captum is an optional extra: import it here, with a one-line hint if it is missing."""
from __future__ import annotations

from ..errors import FeatvizError

INSTALL_HINT = "attribution needs Captum: pip install 'featviz[attribution]' (or: pip install captum)"


def require_captum():
    """Return the ``captum.attr`` module or raise a FeatvizError saying how to install it."""
    try:
        import captum.attr as attr
    except ImportError:
        raise FeatvizError(INSTALL_HINT) from None
    return attr


def has_captum() -> bool:
    try:
        require_captum()
    except FeatvizError:
        return False
    return True
