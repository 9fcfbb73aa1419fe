"""Gateway overhead: /v1/completions through the gateway vs vLLM directly (same prompts,
same served model: the champion, adapter or not; interleaved, one run), and feedback
requests/s vs a bare FastAPI handler on this machine.

Needs the stack running (`refinery up`); `make bench` starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.common.settings import REPO_ROOT, get_settings
from services.common.task import load_task
from services.demo.corpus import generate

BARE_APP = """
from fastapi import FastAPI
from services.inference.protocol import FeedbackAccepted, FeedbackCreate

app = FastAPI()


@app.post("/v1/feedback", status_code=202)
async def feedback(body: FeedbackCreate) -> FeedbackAccepted:
    return FeedbackAccepted(feedback_id="x", prediction_id=body.prediction_id)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class NotLikeForLike(RuntimeError):
    """The two paths answered with different models: their times say nothing together."""


def served_by_gateway(key: str) -> str:
    """The name vLLM serves the champion under (the base's, or the adapter's)."""
    settings = get_settings()
    r = httpx.post(
        f"{settings.gateway_url}/v1/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": settings.registered_model, "prompt": "Ticket: hi\nTeam:", "max_tokens": 1},
        timeout=60,
    )
    r.raise_for_status()
    return str(r.json()["model"])


def latency(n: int, key: str, max_tokens: int, served: str) -> dict[str, list[float]]:
    """Sequential requests, the two paths interleaved in random order, both answered by
    the same served model (the champion, adapter or not): vLLM is asked for the name the
    gateway routes to, and every answer's ``model`` is checked."""
    settings = get_settings()
    task = load_task(settings.task_file)
    prompts = [e.prompt for e in generate(task.task, n, seed=99)]
    targets = {
        "gateway": (
            f"{settings.gateway_url}/v1/completions",
            settings.registered_model,
            {"Authorization": f"Bearer {key}"},
        ),
        "vllm": (f"{settings.vllm_url}/v1/completions", served, {}),
    }
    times: dict[str, list[float]] = {name: [] for name in targets}
    with httpx.Client(timeout=60) as http:
        for url, model, headers in targets.values():  # warm both paths
            for _ in range(10):
                http.post(
                    url,
                    headers=headers,
                    json={
                        "model": model,
                        "prompt": prompts[0],
                        "max_tokens": max_tokens,
                        "temperature": 0,
                        "ignore_eos": True,
                    },
                )
        for prompt in prompts:
            order = list(targets.items())
            random.shuffle(order)  # neither path always goes first
            for name, (url, model, headers) in order:
                started = time.perf_counter()
                r = http.post(
                    url,
                    headers=headers,
                    json={
                        "model": model,
                        "prompt": prompt,
                        "max_tokens": max_tokens,
                        "temperature": 0,
                        "ignore_eos": True,
                    },
                )
                times[name].append((time.perf_counter() - started) * 1000)
                r.raise_for_status()
                if r.json()["model"] != served:
                    raise NotLikeForLike(
                        f"{name} answered with {r.json()['model']!r}, not {served!r}: "
                        "the champion changed during the bench"
                    )
    return times


async def _hammer(
    url: str,
    headers: dict[str, str],
    bodies: list[dict[str, str]],
    seconds: float,
    concurrency: int,
) -> tuple[int, int]:
    done = errors = 0
    deadline = time.monotonic() + seconds

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal done, errors
        i = 0
        while time.monotonic() < deadline:
            r = await http.post(url, headers=headers, json=bodies[i % len(bodies)])
            i += 1
            if r.status_code == 202:
                done += 1
            else:
                errors += 1

    async with httpx.AsyncClient(
        timeout=30, limits=httpx.Limits(max_connections=concurrency)
    ) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return done, errors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def feedback_rps(key: str, seconds: float, concurrency: int) -> dict[str, tuple[float, int]]:
    settings = get_settings()
    with httpx.Client(timeout=60) as http:
        ids = [
            http.post(
                f"{settings.gateway_url}/v1/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={
                    "model": settings.registered_model,
                    "prompt": "Ticket: hi\nTeam:",
                    "max_tokens": 2,
                },
            ).json()["id"]
            for _ in range(20)
        ]
    bodies = [
        {"prediction_id": pid, "rating": "up", "user": f"bench-{i}"} for i, pid in enumerate(ids)
    ]
    bare_dir = Path(REPO_ROOT / "var" / "bench")
    bare_dir.mkdir(parents=True, exist_ok=True)
    (bare_dir / "bare_app.py").write_text(BARE_APP)
    port = _free_port()
    bare = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=bare_dir,
        env={**os.environ, "PYTHONPATH": f"{bare_dir}:{REPO_ROOT}"},
    )
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        results = {}
        for name, url, headers in (
            ("bare FastAPI", f"http://127.0.0.1:{port}/v1/feedback", {}),
            ("gateway", f"{settings.gateway_url}/v1/feedback", {"Authorization": f"Bearer {key}"}),
        ):
            done, errors = asyncio.run(_hammer(url, headers, bodies, seconds, concurrency))
            results[name] = (done / seconds, errors)
        return results
    finally:
        bare.terminate()
        bare.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    settings = get_settings()
    key = os.environ.get("REFINERY_CLIENT_API_KEY") or settings.admin_key_path.read_text().strip()

    # Short answers (the demo's label) make the hop's fixed cost look largest; longer
    # generations show the same cost against more model time.
    served = served_by_gateway(key)
    for max_tokens, n in ((4, args.requests), (64, args.requests // 2)):
        times = latency(n, key, max_tokens, served)
        print(
            f"\n/v1/completions, {n} prompts, {max_tokens} tokens each (ignore_eos), "
            f"sequential, gateway and vLLM interleaved, both served by {served}"
        )
        print(f"{'path':<10}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
        for name, values in times.items():
            print(
                f"{name:<10}{percentile(values, 50):>10.2f}{percentile(values, 99):>10.2f}"
                f"{statistics.mean(values):>10.2f}"
            )
        for q, target in ((50, 5.0), (99, 10.0)):
            g, v = percentile(times["gateway"], q), percentile(times["vllm"], q)
            print(
                f"gateway overhead at p{q}: {g - v:+.2f} ms = {100 * (g / v - 1):+.1f}% "
                f"(target < {target:.0f}%)"
            )

    rps = feedback_rps(key, args.seconds, args.concurrency)
    print(f"\nPOST /v1/feedback, {args.concurrency} concurrent clients, {args.seconds:.0f} s each")
    for name, (value, errors) in rps.items():
        print(f"{name:<14}{value:>10.1f} req/s   errors {errors}")
    ratio = rps["gateway"][0] / rps["bare FastAPI"][0]
    print(f"gateway / bare FastAPI: {ratio:.2f}x (the gateway waits for acks=all on each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
