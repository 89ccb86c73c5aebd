"""The outer checks of ``featviz serve``, one ASGI middleware around the whole app.

Before a request reaches a route:
- URL: longer than ``max_path`` -> 414; a NUL or backslash -> 400; a ``..`` segment -> 400.
- ``Host`` must be an IP address, ``localhost`` or a name the server was told it
  serves (DNS rebinding: a page from evil.example whose name now resolves to
  127.0.0.1 sends ``Host: evil.example``) -> 403 otherwise.
- A request that changes something (POST, PUT, PATCH, DELETE) with an ``Origin``
  must come from the page's own origin -> 403 otherwise: another web site the
  user visits cannot queue renders or cancel jobs.
- A body sent to the API must be ``application/json`` -> 415 otherwise (a
  cross-site form or ``text/plain`` fetch cannot send that without a CORS
  preflight, which this server never grants).
- A body must be at most ``max_body`` bytes (413: at once when Content-Length
  says so, else as soon as it grows past) and arrive within ``body_timeout``
  seconds (408). One reader checks both, so both answer in the same JSON shape
  as every other error (Starlette's body limit answers in plain text).

On the way out every response, errors included, gets the same security
headers, and an exception that escaped a route becomes a one-line 500 (its
traceback goes to the server log, never to the client).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..microscope.settings import API_PREFIX
from .limits import Limits

log = logging.getLogger("featviz.server")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'",
}
SECURITY_HEADERS_RAW = [  # as ASGI and h11 carry them
    (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
WITH_BODY = ("POST", "PUT", "PATCH")


def error_response(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    """Every error the server sends: ``{"detail": "<one line>"}`` (the security headers come from the guard)."""
    return JSONResponse({"detail": " ".join(str(detail).split())}, status_code=status, headers=headers)


def host_name(value: str | None) -> str | None:
    """The host of a ``Host`` header or of an origin's netloc, lower case, without port or brackets."""
    if not value:
        return None
    try:
        return urlsplit("//" + value).hostname
    except ValueError:
        return None


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware: the checks above. ``served_names``: host names (besides IP addresses and
    localhost) that the ``Host`` header may carry."""

    def __init__(self, app: ASGIApp, limits: Limits, served_names=()):
        self.app, self.limits = app, limits
        self.served_names = {"localhost"} | {n.lower().rstrip(".") for n in served_names}

    def host_allowed(self, host: str | None) -> bool:
        name = host_name(host)
        if name is None:
            return False
        # An address is not a name an attacker can point at this machine; only names can be rebound.
        return is_ip_address(name) or name.rstrip(".") in self.served_names

    def refusal(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        """(status, why) for a request refused before any route sees it, else None."""
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if len(path) > self.limits.max_path or len(scope.get("query_string", b"")) > self.limits.max_path:
            return 414, "URL too long"
        if "\x00" in path or "\\" in path:
            return 400, "malformed path"
        if ".." in path.split("/"):
            return 400, "path traversal is not allowed"
        host = headers.get("host")
        if not self.host_allowed(host):
            return 403, (f"this server does not answer to the host name {host_name(host) or host!r}; use "
                         "its address, localhost, or a name given to featviz serve")
        if method in UNSAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and (urlsplit(origin).netloc.lower() != host.lower()
                                       or urlsplit(origin).scheme not in ("http", "https")):
                return 403, f"cross-origin request refused (from {origin[:100]!r})"
            length = headers.get("content-length")
            if length is not None and (not length.isascii() or not length.isdigit()
                                       or int(length) > self.limits.max_body):
                return 413, f"request body over {self.limits.max_body} bytes"
            if method in WITH_BODY and path.startswith(f"/{API_PREFIX}/"):
                content_type = headers.get("content-type", "").split(";")[0].strip().lower()
                if content_type != "application/json":
                    return 415, "the body must be JSON sent as Content-Type: application/json"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *(h for h in SECURITY_HEADERS_RAW if h[0] not in present)]}
            await send(message)

        refused = self.refusal(scope, Headers(scope=scope))
        if refused is not None:
            await error_response(*refused)(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, self.timed_body(receive), send_with_headers)
        except Exception:
            if started:
                raise
            log.exception("featviz serve: %s %s failed", scope.get("method"), scope.get("path"))
            await error_response(500, "internal server error (the server's log has the details)")(
                scope, receive, send_with_headers)

    def timed_body(self, receive: Receive) -> Receive:
        """``receive`` with a size limit and a deadline on the request body (a slow or endless sender
        cannot hold a request open)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        body_done = False
        received = 0

        async def receive_in_time() -> Message:
            nonlocal body_done, received
            if body_done:  # after the body, receive only waits for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:  # (not the builtin TimeoutError before Python 3.11)
                raise HTTPException(408, f"the request body did not arrive within "
                                         f"{self.limits.body_timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limits.max_body:
                    raise HTTPException(413, f"request body over {self.limits.max_body} bytes")
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        return receive_in_time
