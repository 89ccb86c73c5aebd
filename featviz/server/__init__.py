"""``featviz serve``: a microscope site over HTTP, with renders on demand.

    from featviz.server import create_app, serve_in_background
    app = create_app("site")                       # the ASGI app (FastAPI)
    with serve_in_background("site") as running:   # uvicorn in a thread
        print(running.url)

The parts, each in its own module:
- ``limits``: the bounds (queue, per client, steps, sizes, time, connections), one checked value;
- ``queue``: the fair, bounded render queue and its jobs;
- ``state``: the site behind the routes (manifest views, models, renders, pages made on demand);
- ``files``: the built files, through Starlette's StaticFiles with the site's rules;
- ``guard``: URL, Host, Origin, content-type and body-time checks, security headers, one-line errors;
- ``app``: the routes; ``run``: uvicorn, with a header timeout and an idle-evicting connection cap.

The library (``featviz.microscope`` and the rest) never imports this package.
"""
from ..errors import FeatvizError

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise FeatvizError("featviz serve needs FastAPI and uvicorn: pip install 'featviz[serve]'") from exc

from .app import create_app  # noqa: E402
from .limits import Limits  # noqa: E402
from .run import BackgroundServer, is_loopback, serve, serve_in_background  # noqa: E402

__all__ = ["create_app", "Limits", "serve", "serve_in_background", "BackgroundServer", "is_loopback"]
