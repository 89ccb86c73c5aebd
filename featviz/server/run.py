"""Running ``featviz serve`` with uvicorn: in the foreground (the CLI) or in a thread (tests, benchmarks).

uvicorn's own ``limit_concurrency`` counts open connections, idle ones included:
64 idle sockets were enough to make every other request a 503. It is off here;
instead each connection runs the HTTP protocol below, which
- closes a connection that has not sent a request's headers within
  ``header_timeout`` (slow or idle clients; ``keep_alive`` also bounds the idle
  time between requests), and
- holds at most ``max_connections`` open: a new connection closes the one idle
  the longest, so idle connections can never keep others out, and is only
  refused (503) when every open connection is in the middle of a request.
Requests themselves are bounded where they cost something: the render queue
(``Limits``) and the body size and time (``featviz.server.guard``). Static pages
are never waiting behind renders.
"""
from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from ..errors import FeatvizError
from .app import create_app
from .guard import SECURITY_HEADERS_RAW
from .limits import Limits

try:
    import h11
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ImportError:  # pragma: no cover - depends on the environment
    raise FeatvizError("featviz serve needs uvicorn: pip install 'featviz[serve]'") from None

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _one_line_body(detail: str) -> bytes:
    return json.dumps({"detail": detail}).encode()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a connection cap that evicts idle connections."""

    limits: Limits = Limits()  # set per server by protocol_for()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.header_timer = None
        self.idle_since = self.loop.time()
        self.wait_for_headers()
        self.make_room()

    def connection_lost(self, exc) -> None:
        self.stop_waiting_for_headers()
        super().connection_lost(exc)

    # -- header timeout ---------------------------------------------------------------------------
    def wait_for_headers(self) -> None:
        self.stop_waiting_for_headers()
        self.header_timer = self.loop.call_later(self.limits.header_timeout, self.headers_too_slow)

    def stop_waiting_for_headers(self) -> None:
        if getattr(self, "header_timer", None) is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def headers_too_slow(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a new request's headers arrived
            self.stop_waiting_for_headers()

    def on_response_complete(self) -> None:
        self.idle_since = self.loop.time()
        if not self.transport.is_closing():
            self.wait_for_headers()  # before the parent looks at pipelined requests, which stop it again
        super().on_response_complete()

    # -- connection cap ---------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def make_room(self) -> None:
        open_now = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_now) <= self.limits.max_connections:
            return
        idle = [c for c in open_now if c is not self and isinstance(c, GuardedH11Protocol) and c.idle]
        if idle:
            min(idle, key=lambda c: c.idle_since).transport.close()
            return
        body = _one_line_body(f"the server has {self.limits.max_connections} requests in progress; try again")
        head = [b"HTTP/1.1 503 Service Unavailable", b"content-type: application/json", b"connection: close",
                b"retry-after: 5", b"content-length: %d" % len(body), *(k + b": " + v for k, v in SECURITY_HEADERS_RAW)]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse: a one-line JSON 400 with the same security headers as any answer."""
        body = _one_line_body(msg)
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", b"%d" % len(body)), *SECURITY_HEADERS_RAW]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def protocol_for(limits: Limits) -> type[GuardedH11Protocol]:
    return type("FeatvizHTTPProtocol", (GuardedH11Protocol,), {"limits": limits})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def names_for(host: str, extra=()) -> tuple[str, ...]:
    """Host names the server answers to when bound to ``host`` (IP addresses and localhost always)."""
    names = list(extra)
    if host in WILDCARD_HOSTS:
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            names.append(host)
    return tuple(dict.fromkeys(n for n in names if n))


def _config(site, model, host: str, port: int, log_level: str, limits: Limits, served_names) -> Any:
    app = create_app(site, model, limits=limits, served_names=names_for(host, served_names))
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol_for(limits),
                            limit_concurrency=None, timeout_keep_alive=limits.keep_alive,
                            h11_max_incomplete_event_size=16 * 1024, server_header=False)
    return app, config


def serve(site, model=None, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", *,
          limits: Limits | None = None, served_names=(), **limit_overrides) -> None:
    """Run the app with uvicorn (blocking). ``served_names``: more host names the server is reached by."""
    limits = replace(limits or Limits(), **limit_overrides)
    _, config = _config(site, model, host, port, log_level, limits, served_names)
    uvicorn.Server(config).run()


@dataclass
class BackgroundServer:
    """``featviz serve`` running in a thread of this process (a notebook, a test, a benchmark)."""

    server: Any
    thread: threading.Thread
    host: str
    port: int
    app: Any

    @property
    def url(self) -> str:
        return f"http://{self.host if ':' not in self.host else '[' + self.host + ']'}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_background(site, model=None, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                        start_timeout: float = 60.0, *, limits: Limits | None = None, served_names=(),
                        **limit_overrides) -> BackgroundServer:
    """Start ``featviz serve`` for ``site`` in a daemon thread and return once it accepts
    connections. ``port`` 0 takes a free one; ``.url`` says where, ``.stop()`` ends it."""
    limits = replace(limits or Limits(), **limit_overrides)
    if port == 0:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    app, config = _config(site, model, host, port, log_level, limits, served_names)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="featviz-serve")
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise FeatvizError(f"the server for {site} did not start on {host}:{port}")
        time.sleep(0.05)
    return BackgroundServer(server, thread, host, port, app)
