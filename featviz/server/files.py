"""The built files of a site, served by Starlette's StaticFiles with the site's rules.

- Read-only (GET and HEAD; anything else 405).
- Nothing outside the site: StaticFiles resolves symlinks and refuses what lands
  outside (``follow_symlink=False``); the guard has already refused ``..``.
- Nothing private to it: hidden segments, the manifest, SQLite databases, locks
  and temporary files are 404, whatever name a symlink gives them.
- A folder URL without its final slash redirects to a path built from the
  checked segments (never to another host); HTML gets the marker that turns on
  the page's on-demand features.
- What is not built is asked of ``on_missing`` (the pages made on demand).
"""
from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from .state import private_name

# Every built page carries this marker off; the server turns it on in the pages it serves, so the
# page's script knows it may ask for renders on demand (the page itself is never rebuilt for that).
MARKER_OFF = 'name="featviz-serve" content="0"'
MARKER_ON = 'name="featviz-serve" content="1"'
NO_CACHE = {"Cache-Control": "no-cache"}

OnMissing = Callable[[list[str], Scope], Awaitable["Response | None"]]


def marked_html(text: str, status: int = 200, headers: dict | None = None) -> HTMLResponse:
    """A page as served: with the marker its script looks for to offer renders on demand."""
    return HTMLResponse(text.replace(MARKER_OFF, MARKER_ON, 1), status_code=status,
                        headers={**NO_CACHE, **(headers or {})})


def slashed(parts: list[str]) -> str:
    """The folder URL of ``parts``, built from the checked segments: "//host" cannot become an open redirect."""
    return "/" + "".join(f"{part}/" for part in parts)


class SiteFiles(StaticFiles):
    def __init__(self, site: Path, on_missing: OnMissing):
        super().__init__(directory=site, html=True, follow_symlink=False)
        self.site = Path(os.path.realpath(site))
        self.on_missing = on_missing

    def lookup_path(self, path: str):
        if private_name(PurePath(path).parts):
            return "", None
        full_path, stat_result = super().lookup_path(path)
        # What the path resolves to counts too: a symlink named page.html may point at the manifest.
        if stat_result is not None and private_name(Path(full_path).relative_to(self.site).parts):
            return "", None
        return full_path, stat_result

    async def get_response(self, path: str, scope: Scope) -> Response:
        parts = [part for part in PurePath(path).parts if part != "."]
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            response = await self.on_missing(parts, scope)
            if response is None:
                raise
            return response
        if isinstance(response, RedirectResponse):  # a folder without its final slash
            return RedirectResponse(slashed(parts), status_code=307)
        if isinstance(response, FileResponse):
            if str(response.path).endswith(".html"):
                # Pages are a few KB: read in the event loop, as a thread hop costs more than the read.
                text = Path(response.path).read_text(encoding="utf-8")
                kept = {k: response.headers[k] for k in ("etag", "last-modified") if k in response.headers}
                return marked_html(text, headers=kept)
            if str(response.path).endswith((".js", ".css")):
                response.headers.update(NO_CACHE)
        return response
