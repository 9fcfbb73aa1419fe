"""Headless Chromium (Debian's ``chromium``; infra/setup.sh installs it) driven over the
DevTools protocol: load a page, wait until it has rendered what a test waits for, and
keep a screenshot. The UI under test fetches its data after the first paint, so a plain
``chromium --screenshot`` catches empty panels."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("no chromium on PATH: `make setup` installs Debian's package")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render(url: str, ready_js: str, screenshot: Path, timeout_s: float = 90) -> Any:
    """Load ``url``; poll ``ready_js`` (a JS expression) until it is truthy; save a
    full-page PNG to ``screenshot``; return the expression's last value."""
    return asyncio.run(_render(url, ready_js, screenshot, timeout_s))


async def _render(url: str, ready_js: str, screenshot: Path, timeout_s: float) -> Any:
    port = _free_port()
    # Chromium's helpers may still write to the profile as the browser ends.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [
                chromium(),
                "--headless=new",
                "--no-sandbox",  # root in a container has no user namespace to sandbox with
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1400,2600",
                f"--remote-debugging-port={port}",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own group: the helpers end with it
        )
        try:
            page = await _page(port, deadline=time.monotonic() + 30)
            async with websockets.connect(page, max_size=64 * 2**20) as ws:
                session = _Session(ws)
                await session.call("Page.enable")
                await session.call("Page.navigate", url=url)
                deadline = time.monotonic() + timeout_s
                value = None
                while time.monotonic() < deadline:
                    result = await session.call(
                        "Runtime.evaluate", expression=ready_js, returnByValue=True
                    )
                    value = result.get("result", {}).get("value")
                    if value:
                        break
                    await asyncio.sleep(1)
                await asyncio.sleep(1)  # the last charts' transitions
                shot = await session.call(
                    "Page.captureScreenshot", format="png", captureBeyondViewport=True
                )
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                return value
        finally:
            os.killpg(browser.pid, signal.SIGTERM)
            browser.wait(timeout=30)


async def _page(port: int, deadline: float) -> str:
    """The DevTools websocket of the browser's first page, once it listens."""
    while True:
        try:
            targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
            return next(str(t["webSocketDebuggerUrl"]) for t in targets if t["type"] == "page")
        except (httpx.HTTPError, StopIteration):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


class _Session:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        mine = self.next_id
        await self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            message = json.loads(await self.ws.recv())
            if message.get("id") == mine:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
