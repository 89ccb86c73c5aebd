"""The bounds of ``featviz serve``: one frozen value, checked when it is made."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..errors import FeatvizError

# What each limit is called on the command line, so that a refusal names what the user typed.
OPTION_NAMES = {"workers": "--workers", "max_queue": "--max-queue", "per_client": "--per-client",
                "max_steps": "--max-steps", "max_size": "--max-size", "job_timeout": "--timeout"}


@dataclass(frozen=True)
class Limits:
    """Bounds of the server and its on-demand renderer (all per server)."""

    workers: int = 1             # renders at once (threads); torch already uses every core
    max_queue: int = 8           # jobs waiting; beyond: 429
    per_client: int = 2          # queued + running jobs per client address; beyond: 429
    max_steps: int = 256         # per request; beyond: 422
    max_size: int = 256          # px per request; beyond: 422
    min_size: int = 32
    job_timeout: float = 300.0   # seconds of rendering per job
    queue_timeout: float = 600.0  # seconds a job may wait before it is dropped
    max_body: int = 4096         # bytes of a request body; beyond: 413
    max_path: int = 1024         # characters of a URL path (and of its query); beyond: 414
    max_live: int = 512          # cached on-demand results kept under SITE/_live
    keep_jobs: int = 256         # finished jobs remembered for status queries
    # Connections (applied by the uvicorn runner, see featviz.server.run):
    max_connections: int = 256   # open at once; a new one closes the connection idle the longest
    header_timeout: float = 10.0  # seconds a connection may take to send a request's headers
    body_timeout: float = 10.0   # seconds a request may take to send its body
    keep_alive: float = 5.0      # seconds an idle keep-alive connection stays open

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            name = f.name + (f" ({OPTION_NAMES[f.name]})" if f.name in OPTION_NAMES else "")
            if f.type == "int":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise FeatvizError(f"server limit {name} must be a whole number of at least 1, not {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                # nan compares false with everything and inf never ends: both would switch the limit off.
                raise FeatvizError(f"server limit {name} must be a finite number of seconds above 0, not {value!r}")
        if self.min_size > self.max_size:
            raise FeatvizError(f"server limit max_size (--max-size) {self.max_size} is below the smallest "
                               f"render size {self.min_size}")
