"""`serve`: the generated site over stdlib http.server, on 127.0.0.1 unless asked otherwise. Static files only."""

from __future__ import annotations

import functools
import ipaddress
import logging
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neuron_explainer.core.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class _SiteHandler(SimpleHTTPRequestHandler):
    """Static files with headers that keep the browser from caching stale pages or guessing content types."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript", ".json": "application/json",
                      ".svg": "image/svg+xml"}

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's parameter name
        logger.info("%s %s", self.address_string(), format % args)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(directory: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    """A server for the site in `directory` (port 0 picks a free one: read `server.server_address`)."""
    root = Path(directory)
    if not (root / "index.html").is_file():
        raise UserError(f"{root} is not a generated site (no index.html); run "
                        "`neuron-explainer export --format html --out DIR` first")
    if not _is_loopback(host):
        logger.warning("serving on %s makes the site reachable from other machines", host)
    handler = functools.partial(_SiteHandler, directory=str(root.resolve()))
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def site_url(server: ThreadingHTTPServer) -> str:
    """The URL of a server's index page."""
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else str(host)
    return f"http://{shown}:{port}/"


def serve_site(directory: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
               ready: Callable[[str], None] | None = None) -> None:
    """Serve the site until interrupted (Ctrl-C ends it cleanly); `ready` gets the URL once it listens."""
    server = make_server(directory, host=host, port=port)
    with server:
        if ready is not None:
            ready(site_url(server))
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            logger.info("server stopped")
