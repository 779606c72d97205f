"""A tiny Chrome DevTools Protocol client over `--remote-debugging-pipe` (no websocket, no extra package).

Chromium reads NUL-terminated JSON commands on file descriptor 3 and writes responses and events on 4. One
reader thread files responses by id and keeps every event, so a test can ask afterwards which console errors,
exceptions and requests a page produced.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--no-default-browser-check", "--disable-dev-shm-usage",
    "--mute-audio", "--hide-scrollbars", "--window-size=1280,900",
)
"""Launch flags: headless, no sandbox (containers), and nothing that phones home."""


class CDPError(RuntimeError):
    """A protocol command failed or timed out, or the browser went away."""


class Browser:
    """A headless Chromium process driven over the debugging pipe."""

    def __init__(self, executable: str, user_data_dir: Path, *, log_path: Path | None = None) -> None:
        to_browser_read, to_browser_write = os.pipe()
        from_browser_read, from_browser_write = os.pipe()

        def wire_pipe_descriptors() -> None:
            # Move both ends above the target numbers first, so dup2 onto 3/4 cannot clobber one of them.
            reading = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD_CLOEXEC, 10)
            writing = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(reading, 3)
            os.dup2(writing, 4)

        log = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [executable, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe",
                 "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=False,
                preexec_fn=wire_pipe_descriptors)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
            os.close(to_browser_read)
            os.close(from_browser_write)
        self._writer = os.fdopen(to_browser_write, "wb", buffering=0)
        self._reader = os.fdopen(from_browser_read, "rb", buffering=0)
        self._next_id = 0
        self._lock = threading.Condition()
        self._responses: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        """Every event received, in order (each with `method`, `params` and `sessionId`)."""
        self._closed = False
        self._thread = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            chunk = self._reader.read(65536)
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                with self._lock:
                    if "id" in message:
                        self._responses[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._lock.notify_all()
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """Send one command and wait for its result (CDPError on a protocol error or timeout)."""
        with self._lock:
            self._next_id += 1
            command_id = self._next_id
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._writer.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while command_id not in self._responses:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise CDPError(f"{method}: {'browser exited' if self._closed else 'timed out'}")
                self._lock.wait(remaining)
            response = self._responses.pop(command_id)
        if "error" in response:
            raise CDPError(f"{method}: {response['error']}")
        return response.get("result", {})

    def wait_event(self, predicate: Callable[[dict[str, Any]], bool], *, start: int = 0,
                   timeout: float = 30.0) -> dict[str, Any]:
        """The first event at index >= `start` that satisfies `predicate` (waiting for it if needed)."""
        deadline = time.monotonic() + timeout
        index = start
        with self._lock:
            while True:
                while index < len(self.events):
                    if predicate(self.events[index]):
                        return self.events[index]
                    index += 1
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise CDPError("timed out waiting for an event")
                self._lock.wait(remaining)

    def new_page(self) -> Page:
        """A fresh tab with the Page, Runtime, Log and Network domains enabled."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        return page

    def close(self) -> None:
        """Ask the browser to quit, then make sure it has."""
        try:
            self.send("Browser.close", timeout=5)
        except (CDPError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._writer.close()
        self._thread.join(timeout=5)
        self._reader.close()


class Page:
    """One tab: navigate, evaluate JavaScript, take screenshots, and read what it logged and requested."""

    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target
        self._first_event = len(browser.events)

    def send(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30.0) -> dict[str, Any]:
        """A command in this tab's session."""
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def _mine(self) -> list[dict[str, Any]]:
        return [event for event in self.browser.events[self._first_event:] if event.get("sessionId") == self.session]

    def navigate(self, url: str, *, timeout: float = 30.0) -> None:
        """Load `url` and wait for its load event."""
        start = len(self.browser.events)
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigating to {url}: {result['errorText']}")
        self.wait_load(start=start, timeout=timeout)

    def wait_load(self, *, start: int, timeout: float = 30.0) -> None:
        """Wait for a load event of this tab after event index `start`."""
        self.browser.wait_event(lambda event: event.get("sessionId") == self.session
                                and event.get("method") == "Page.loadEventFired", start=start, timeout=timeout)

    def evaluate(self, expression: str, *, timeout: float = 30.0) -> Any:
        """The JSON value of a JavaScript expression (promises awaited); CDPError if it throws."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise CDPError(f"evaluating {expression[:80]!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, timeout: float = 15.0) -> Any:
        """Poll until `expression` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for {expression!r}")
            time.sleep(0.05)

    def click_and_wait_load(self, selector: str, *, timeout: float = 30.0) -> None:
        """Click the element matching `selector` (a link) and wait for the page it opens to load."""
        start = len(self.browser.events)
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")
        self.wait_load(start=start, timeout=timeout)

    def screenshot(self, path: Path) -> None:
        """Save a full-page PNG."""
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (CSP violations, failed loads)."""
        errors = []
        for event in self._mine():
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(arg.get("value", arg.get("description", "")))
                                                     for arg in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                errors.append("exception: " + str(details.get("exception", {}).get("description", details)))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append("log: " + params["entry"].get("text", ""))
        return errors

    def requested_urls(self) -> list[str]:
        """URLs of every request the tab made (documents, scripts, styles, images...)."""
        return [event["params"]["request"]["url"] for event in self._mine()
                if event.get("method") == "Network.requestWillBeSent"]

    def dialogs(self) -> list[str]:
        """Messages of JavaScript dialogs (alert/confirm/prompt) the tab opened."""
        return [event["params"].get("message", "") for event in self._mine()
                if event.get("method") == "Page.javascriptDialogOpening"]

    def close(self) -> None:
        """Close the tab."""
        self.browser.send("Target.closeTarget", {"targetId": self.target})
