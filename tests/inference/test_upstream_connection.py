"""The hop to vLLM survives a pooled connection the server closed; a refused one fails fast.

These exercise the gateway's HTTP client on the wire: a plain TCP server stands for the
far end's connection handling (keep-alive then a close), not for vLLM's API."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from refinery.inference.exceptions import Unavailable
from refinery.inference.serving import post_once_more_on_a_stale_connection

_OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\n{}"
)


async def _read_request(reader: asyncio.StreamReader) -> bool:
    """Read one request (headers and a Content-Length body); False at end of stream."""
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return False
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return True


async def _answer_once_per_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[str]
) -> None:
    """Answer a connection's first request; close it on its second without a word, as a
    server that dropped an idle keep-alive connection does when the close races a request."""
    try:
        await _read_request(reader)
        seen.append("answered")
        writer.write(_OK)
        await writer.drain()
        await _read_request(reader)
        seen.append("dropped")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def test_a_request_on_a_connection_the_server_dropped_is_sent_once_more() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        server = await asyncio.start_server(
            lambda r, w: _answer_once_per_connection(r, w, seen), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        async with (
            server,
            aiohttp.ClientSession(
                base_url=f"http://127.0.0.1:{port}", connector=aiohttp.TCPConnector(limit=1)
            ) as session,
        ):
            for _ in range(2):
                resp = await post_once_more_on_a_stale_connection(session, "/v1/x", {"a": 1})
                assert resp.status == 200
                await resp.read()
        return seen

    # The second request met the kept-alive connection's close and went out again.
    assert asyncio.run(scenario()) == ["answered", "dropped", "answered"]


def test_a_refused_connection_is_unavailable_without_a_second_try() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as session:
            await post_once_more_on_a_stale_connection(session, "/v1/x", {})

    with pytest.raises(Unavailable, match="vLLM unreachable"):
        asyncio.run(scenario())
