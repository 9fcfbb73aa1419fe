"""The hop to vLLM: a pooled connection the server closed is sent once more, a refused
replica is skipped, the replica with the fewest requests outstanding gets the next one.

These exercise the gateway's replica pool on the wire: plain TCP servers stand for the far
end's connection handling (keep-alive, a close, a refusal, a slow answer), not for vLLM's
API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import aiohttp
import pytest

from refinery.inference.exceptions import Unavailable
from refinery.inference.replicas import Replicas

TIMEOUT = aiohttp.ClientTimeout(total=10)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

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


async def _server(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _refusing() -> str:
    """The url of a port nobody listens on (a replica that is down)."""
    server, url = await _server(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    return url


async def _post(replicas: Replicas) -> int:
    async with AsyncExitStack() as held:
        resp = await replicas.post(held, "/v1/x", {"a": 1})
        await resp.read()
        return resp.status


def test_a_request_on_a_connection_the_server_dropped_is_sent_once_more() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        server, url = await _server(lambda r, w: _answer_once_per_connection(r, w, seen))
        replicas = Replicas([url], TIMEOUT, connections_per_replica=1)
        async with server:
            statuses = [await _post(replicas) for _ in range(2)]
        await replicas.close()
        assert statuses == [200, 200]
        return seen

    # The second request met the kept-alive connection's close and went out again.
    assert asyncio.run(scenario()) == ["answered", "dropped", "answered"]


def test_a_refused_connection_is_unavailable_without_a_second_try() -> None:
    async def scenario() -> None:
        replicas = Replicas([await _refusing()], TIMEOUT)
        try:
            await _post(replicas)
        finally:
            await replicas.close()

    with pytest.raises(Unavailable, match="vLLM unreachable"):
        asyncio.run(scenario())


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await _read_request(reader):
            writer.write(_OK)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def test_a_replica_that_is_down_is_skipped_and_rests() -> None:
    async def scenario() -> tuple[list[int], int, int]:
        server, up = await _server(_answer)
        replicas = Replicas([await _refusing(), up], TIMEOUT, rest_s=60)
        async with server:
            statuses = [await _post(replicas) for _ in range(4)]
        down, alive = replicas.all
        await replicas.close()
        return statuses, down.sent, alive.sent

    statuses, down_sent, alive_sent = asyncio.run(scenario())
    assert statuses == [200] * 4  # the first went to the down one, then once more elsewhere
    assert (down_sent, alive_sent) == (0, 4)


def test_a_replica_that_dies_mid_request_has_it_answered_by_another() -> None:
    async def vanish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)  # took the request, then died without a word
        writer.close()

    async def scenario() -> tuple[list[int], int]:
        dying, dying_url = await _server(vanish)
        server, up = await _server(_answer)
        replicas = Replicas([dying_url, up], TIMEOUT)
        async with dying, server:
            statuses = [await _post(replicas) for _ in range(4)]
        alive = replicas.all[1].sent
        await replicas.close()
        return statuses, alive

    statuses, alive_served = asyncio.run(scenario())
    assert statuses == [200] * 4 and alive_served == 4


def test_the_replica_with_the_fewest_requests_outstanding_gets_the_next() -> None:
    async def scenario() -> list[str]:
        release = asyncio.Event()

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await release.wait()
            await _answer(reader, writer)

        servers = [await _server(slow) for _ in range(2)]
        replicas = Replicas([url for _, url in servers], TIMEOUT)
        first, second = replicas.all
        picked: list[str] = []
        async with servers[0][0], servers[1][0]:
            tasks = []
            for _ in range(3):  # each sent while the earlier ones are still outstanding
                tasks.append(asyncio.create_task(_post(replicas)))
                await asyncio.sleep(0.05)
                picked.append(f"{first.outstanding}/{second.outstanding}")
            release.set()
            assert await asyncio.gather(*tasks) == [200, 200, 200]
        picked.append(f"{first.outstanding}/{second.outstanding}")
        await replicas.close()
        return picked

    # One each, then the third to either (a tie), and nothing outstanding once answered.
    assert asyncio.run(scenario()) in (["1/0", "1/1", "2/1", "0/0"], ["0/1", "1/1", "1/2", "0/0"])
