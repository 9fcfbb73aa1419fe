"""Gateway overhead: /v1/completions through the gateway vs vLLM directly (same prompts,
same served model: the champion, adapter or not; interleaved, one run), and feedback
requests/s vs a bare FastAPI handler on this machine.

Needs the stack running (`refinery up`); `make bench` starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx

from bench.cpu import cpu_seconds, since
from bench.harness import free_port
from bench.quiet import without_retraining
from bench.report import Figure, NotLikeForLike, record
from refinery.common.registry import MERGED_URL_TAG, ModelRegistry
from refinery.common.settings import IMPORT_ROOT, REPO_ROOT, get_settings
from refinery.common.task import load_task
from refinery.demo.corpus import generate

BARE_APP = """
from fastapi import FastAPI
from refinery.inference.protocol import FeedbackAccepted, FeedbackCreate

app = FastAPI()


@app.post("/v1/feedback", status_code=202)
async def feedback(body: FeedbackCreate) -> FeedbackAccepted:
    return FeedbackAccepted(feedback_id="x", prediction_id=body.prediction_id)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


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


def _sent_to(url: str) -> float:
    """Requests the gateway has sent to the vLLM server at ``url`` (its /metrics)."""
    metrics = httpx.get(f"{get_settings().gateway_url}/metrics", timeout=30).text
    for line in metrics.splitlines():
        if line.startswith(f'refinery_vllm_requests_total{{replica="{url}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def champion_server(key: str, timeout_s: float = 600) -> str:
    """The vLLM server the gateway sends the champion to: with REFINERY_SERVE_MERGED=1 and a
    LoRA champion, the deployer's merged server, once the gateway uses it; else the replica."""
    settings = get_settings()
    registry = ModelRegistry(settings)
    champion = registry.champion()
    if not settings.serve_merged or champion is None or champion.kind != "lora":
        return settings.vllm_url
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        url = registry.get(champion.version).tags.get(MERGED_URL_TAG)
        if url is not None:
            before = _sent_to(url)
            served_by_gateway(key)
            if _sent_to(url) > before:
                return url
        time.sleep(2)
    raise SystemExit(
        f"the gateway never sent {champion.served_name} to a merged server in {timeout_s:.0f} s; "
        f"see {settings.log_dir / 'deployer.log'}"
    )


Target = tuple[str, str, dict[str, str], str]  # url, model asked for, headers, model expected


def interleaved(
    targets: dict[str, Target], prompts: list[str], max_tokens: int
) -> dict[str, list[float]]:
    """Milliseconds per request of each target, sequential, the targets in random order
    per prompt (neither always goes first); every answer's ``model`` is checked."""
    times: dict[str, list[float]] = {name: [] for name in targets}

    def body(model: str, prompt: str) -> dict[str, object]:
        return {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }

    with httpx.Client(timeout=60) as http:
        for url, model, headers, _ in targets.values():  # warm every path
            for _ in range(10):
                http.post(url, headers=headers, json=body(model, prompts[0]))
        for prompt in prompts:
            order = list(targets.items())
            random.shuffle(order)
            for name, (url, model, headers, expected) in order:
                started = time.perf_counter()
                r = http.post(url, headers=headers, json=body(model, prompt))
                times[name].append((time.perf_counter() - started) * 1000)
                r.raise_for_status()
                if r.json()["model"] != expected:
                    raise NotLikeForLike(
                        f"{name} answered with {r.json()['model']!r}, not {expected!r}: "
                        "the champion changed during the bench"
                    )
    return times


def latency(n: int, key: str, max_tokens: int, served: str, server: str) -> dict[str, list[float]]:
    """The gateway and vLLM directly, both answered by the same served model on the same
    server (the champion, adapter or merged or not): vLLM is asked for the name the gateway
    routes to, at ``server``, where the gateway sends it."""
    settings = get_settings()
    prompts = [e.prompt for e in generate(load_task(settings.task_file).task, n, seed=99)]
    targets: dict[str, Target] = {
        "gateway": (
            f"{settings.gateway_url}/v1/completions",
            settings.registered_model,
            {"Authorization": f"Bearer {key}"},
            served,
        ),
        "vllm": (f"{server}/v1/completions", served, {}, served),
    }
    return interleaved(targets, prompts, max_tokens)


def base_of(served: str) -> str | None:
    """The base model vLLM serves ``served`` on top of, or None when ``served`` is it."""
    models = httpx.get(f"{get_settings().vllm_url}/v1/models", timeout=30).json()["data"]
    parent = {m["id"]: m.get("parent") for m in models}
    return parent.get(served)


def promoted_cost(
    n: int, served: str, base: str, server: str, max_tokens: int
) -> dict[str, list[float]]:
    """vLLM directly: the promoted model as runtime LoRA on the replica, and merged on
    ``server`` when that is not the replica, against its base model, same prompts."""
    settings = get_settings()
    replica = f"{settings.vllm_url}/v1/completions"
    prompts = [e.prompt for e in generate(load_task(settings.task_file).task, n, seed=97)]
    targets: dict[str, Target] = {
        "adapter": (replica, served, {}, served),
        "base": (replica, base, {}, base),
    }
    if server != settings.vllm_url:
        targets["merged"] = (f"{server}/v1/completions", served, {}, served)
    return interleaved(targets, prompts, max_tokens)


async def _hammer(
    url: str,
    headers: dict[str, str],
    bodies: list[dict[str, object]],
    seconds: float,
    concurrency: int,
    answers: Callable[[int, bytes], bool],
) -> tuple[int, int]:
    """Requests answered (``answers(status, body)``) and refused in ``seconds``, from
    ``concurrency`` clients each sending its next request once the last is answered.

    aiohttp, not httpx: httpx's async client spent a whole core on about 530 requests/s on
    this machine, so the bare handler's figure measured the client, not the server.
    """
    done = errors = 0
    deadline = time.monotonic() + seconds
    payloads = [json.dumps(b).encode() for b in bodies]

    async def worker(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal done, errors
        while time.monotonic() < deadline:
            async with session.post(url, data=payloads[i % len(payloads)]) as r:
                body = await r.read()
            i += 1
            if answers(r.status, body):
                done += 1
            else:
                errors += 1

    async with aiohttp.ClientSession(
        headers={**headers, "Content-Type": "application/json"},
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as session:
        await asyncio.gather(*(worker(session, i) for i in range(concurrency)))
    return done, errors


def completions_rps(
    key: str, served: str, server: str, seconds: float, concurrency: int
) -> tuple[dict[str, tuple[float, int]], dict[str, dict[str, float]]]:
    """Completions/s at ``concurrency`` clients, 4 tokens each, gateway and vLLM in turns
    (vLLM, gateway, vLLM, gateway) so a drift in the machine's load hits both alike; every
    answer must come from ``served``. Also the CPU seconds each process of the stack spent
    per path: where a machine's cores went."""
    settings = get_settings()
    prompts = [e.prompt for e in generate(load_task(settings.task_file).task, 200, seed=98)]
    targets = {
        "vllm": (f"{server}/v1/completions", served, {}),
        "gateway": (
            f"{settings.gateway_url}/v1/completions",
            settings.registered_model,
            {"Authorization": f"Bearer {key}"},
        ),
    }

    def from_served(status: int, body: bytes) -> bool:
        if status != 200:
            return False
        if json.loads(body)["model"] != served:
            raise NotLikeForLike(f"an answer came from {json.loads(body)['model']!r}")
        return True

    totals = {name: [0, 0] for name in targets}
    cpu: dict[str, dict[str, float]] = {name: {} for name in targets}
    for _ in range(2):
        for name, (url, model, headers) in targets.items():
            bodies: list[dict[str, object]] = [
                {"model": model, "prompt": p, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
                for p in prompts
            ]
            before = cpu_seconds(settings.run_dir)
            done, errors = asyncio.run(
                _hammer(url, headers, bodies, seconds / 2, concurrency, from_served)
            )
            for process, spent in since(before, cpu_seconds(settings.run_dir)).items():
                cpu[name][process] = cpu[name].get(process, 0.0) + spent
            totals[name][0] += done
            totals[name][1] += errors
    rates = {name: (done / seconds, errors) for name, (done, errors) in totals.items()}
    return rates, cpu


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
    bodies: list[dict[str, object]] = [
        {"prediction_id": pid, "rating": "up", "user": f"bench-{i}"} for i, pid in enumerate(ids)
    ]
    bare_dir = Path(REPO_ROOT / "var" / "bench")
    bare_dir.mkdir(parents=True, exist_ok=True)
    (bare_dir / "bare_app.py").write_text(BARE_APP)
    port = free_port()
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
        env={**os.environ, "PYTHONPATH": f"{bare_dir}:{IMPORT_ROOT}"},
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
            done, errors = asyncio.run(
                _hammer(url, headers, bodies, seconds, concurrency, lambda st, _: st == 202)
            )
            results[name] = (done / seconds, errors)
        return results
    finally:
        bare.terminate()
        bare.wait(10)


def measure(args: argparse.Namespace, key: str) -> tuple[str, list[Figure], int]:
    """Every figure of this bench: (the served model and its server, the figures, requests
    that failed)."""
    # Short answers (the demo's label) make the hop's fixed cost look largest; longer
    # generations show the same cost against more model time.
    served = served_by_gateway(key)
    server = champion_server(key)
    print(f"the gateway sends {served} to {server}")
    figures = []
    for max_tokens, n in ((4, args.requests), (64, args.requests // 2)):
        times = latency(n, key, max_tokens, served, server)
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
        for q, target in ((50, 1.05), (99, 1.10)):
            g, v = percentile(times["gateway"], q), percentile(times["vllm"], q)
            print(f"gateway overhead at p{q}: {g - v:+.2f} ms = {100 * (g / v - 1):+.1f}%")
            figures.append(
                Figure(
                    f"completion p{q}, {max_tokens} tokens, sequential",
                    g,
                    "vLLM directly",
                    v,
                    "ms",
                    f"<= {target}" if max_tokens == 4 else "",
                )
            )

    rates, cpu = completions_rps(key, served, server, args.seconds, args.completion_clients)
    print(f"\n/v1/completions, 4 tokens, {args.completion_clients} concurrent clients")
    for name, (value, errors) in rates.items():
        print(f"{name:<14}{value:>10.1f} req/s   errors {errors}")
    # Where the cores went, per path: CPU ms per completion of each process of the stack.
    per_request = {
        path: {
            process: 1000 * spent / max(1.0, rates[path][0] * args.seconds)
            for process, spent in cpu[path].items()
            if spent > 0.005 * args.seconds
        }
        for path in cpu
    }
    print("CPU ms per completion, by process: ")
    for path, spent in per_request.items():
        print(f"  {path:<10}" + "  ".join(f"{p} {ms:.2f}" for p, ms in sorted(spent.items())))
    figures.append(
        Figure(
            f"completions/s, {args.completion_clients} concurrent clients, 4 tokens",
            rates["gateway"][0],
            "vLLM directly",
            rates["vllm"][0],
            "req/s",
            ">= 0.95",
            note="CPU ms per completion by process, through the gateway: "
            + ", ".join(f"{p} {ms:.1f}" for p, ms in sorted(per_request["gateway"].items()))
            + "; vLLM directly: "
            + ", ".join(f"{p} {ms:.1f}" for p, ms in sorted(per_request["vllm"].items())),
        )
    )

    # What a promotion costs in serving: the promoted model against its base, 64 tokens.
    base = base_of(served)
    if base is not None:
        n = args.requests // 3
        times = promoted_cost(n, served, base, server, 64)
        print(f"\nvLLM directly, {n} prompts, 64 tokens each, {served} vs its base {base}")
        for name, values in times.items():
            print(f"{name:<10}{percentile(values, 50):>10.2f} ms p50")
        base_p50, lora_p50 = percentile(times["base"], 50), percentile(times["adapter"], 50)
        lora = f"runtime LoRA on the replica {lora_p50:.0f} ms ({lora_p50 / base_p50:.2f}x)"
        if "merged" in times:
            figures.append(
                Figure(
                    "promoted model, 64 tokens, p50 on vLLM",
                    percentile(times["merged"], 50),
                    f"its base model ({base}) on the replica",
                    base_p50,
                    "ms",
                    "<= 1.15",
                    note="merged into its base, on the deployer's server (REFINERY_SERVE_MERGED"
                    f"=1); {lora}, as canaries are served",
                )
            )
        else:
            figures.append(
                Figure(
                    "promoted model, 64 tokens, p50 on vLLM",
                    lora_p50,
                    f"its base model ({base}), same vLLM",
                    base_p50,
                    "ms",
                    "<= 1.15",
                    note="runtime LoRA: merged serving is off (REFINERY_SERVE_MERGED=1)",
                )
            )

    rps = feedback_rps(key, args.seconds, args.concurrency)
    print(f"\nPOST /v1/feedback, {args.concurrency} concurrent clients, {args.seconds:.0f} s each")
    for name, (value, errors) in rps.items():
        print(f"{name:<14}{value:>10.1f} req/s   errors {errors}")
    figures.append(
        Figure(
            f"POST /v1/feedback, {args.concurrency} concurrent clients",
            rps["gateway"][0],
            "a bare FastAPI handler, same body",
            rps["bare FastAPI"][0],
            "req/s",
            ">= 0.8",
            note="the gateway answers 202 once Kafka acknowledged each rating (acks=all); the "
            "bare handler answers at once",
        )
    )
    errors = sum(e for _, e in rps.values()) + sum(e for _, e in rates.values())
    return f"{served} from {server}", figures, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=32, help="feedback clients")
    parser.add_argument("--completion-clients", type=int, default=16)
    args = parser.parse_args()
    settings = get_settings()
    key = os.environ.get("REFINERY_CLIENT_API_KEY") or settings.admin_key_path.read_text().strip()
    with without_retraining(settings):
        served, figures, errors = measure(args, key)

    if errors:
        print(f"{errors} requests failed: no figures recorded")
        return 1
    record(
        "gateway",
        figures,
        f"the stack of `refinery up` serving {served}; latency: {args.requests} prompts "
        "sequential, gateway and vLLM in random order per prompt (64 tokens: half as many); "
        f"throughput: {args.seconds:.0f} s per path in two turns each, aiohttp clients; "
        f"feedback: {args.seconds:.0f} s per path.",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
