"""vLLM's spin after a message: vLLM's own 1 s against the stack's CPU default, side by side.

One vLLM server at a time on the champion's base model (no LoRA, on the merged slots' port
+ 10), each
given the same load: 60 sequential 4-token completions (latency), then 5 requests/s for
20 s (the CPU its processes used per request, from /proc), in turns. The stack's setting
(``REFINERY_VLLM_SPIN_S``, refinery/vllm_plugin/spin.py) is the value; vLLM's own spin the
baseline. Run it with the stack up (``make bench`` does); it records its figures.

A server's p50 moves by a third from one start to the next on a 2-core host (spin 0.01 s:
15.5 then 10.2 ms; spin 1 s: 13.9 then 11.3 ms, 2026-12-03), more than the spin moves it:
the two take ``--turns`` turns, the order swapped each turn, and medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.cpu import cpu_seconds
from bench.report import Figure, record
from refinery.common.registry import ModelRegistry
from refinery.common.settings import Settings, get_settings
from refinery.stack.vllm import CPU_SPIN_S, merged_vllm_process

VLLM_OWN_SPIN_S = 1.0  # shm_broadcast.SpinCondition's busy_loop_s in vLLM 0.32
SERVED = "spin-bench"
SERVER = "vllm-merged-0"  # its process name (pid file) under the bench's own var dir
BODY = {"model": SERVED, "prompt": "Ticket: my lamp will not pair\nTeam:", "max_tokens": 4}


def _spent(settings: Settings) -> float:
    """CPU seconds of the server's whole process group (engine core and worker included)."""
    return cpu_seconds(settings.run_dir)[SERVER]


def measure(settings: Settings, model_dir: Path, spin_s: float, rate: float) -> tuple[float, float]:
    """Sequential p50 (ms) and CPU ms per request at ``rate`` of one server spinning ``spin_s``."""
    var = Path(tempfile.mkdtemp(prefix="refinery-bench-spin-"))
    port = settings.vllm_merged_port + 10  # past the blue/green slots; checked free at start
    own = settings.model_copy(
        update={"var_dir": var, "vllm_merged_port": port, "vllm_spin_s": spin_s}
    )
    server = merged_vllm_process(own, 0, model_dir, SERVED)
    assert server.name == SERVER
    server.start()
    try:
        url = f"http://{own.vllm_host}:{port}/v1/completions"
        with httpx.Client(timeout=30) as client:
            for _ in range(5):  # warm
                client.post(url, json=BODY).raise_for_status()
            latencies = []
            for _ in range(60):
                started = time.perf_counter()
                client.post(url, json=BODY).raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
            cpu_before, began, sent = _spent(own), time.monotonic(), 0
            while time.monotonic() - began < 20:
                client.post(url, json=BODY).raise_for_status()
                sent += 1
                time.sleep(max(0.0, began + sent / rate - time.monotonic()))
            cpu_ms = (_spent(own) - cpu_before) / sent * 1000
        return statistics.median(latencies), cpu_ms
    finally:
        server.stop()


def champion_base(settings: Settings) -> Path:
    registry = ModelRegistry(settings)
    champion = registry.champion()
    if champion is None:
        raise SystemExit("no champion: run `make demo` or `./refinery up` first")
    return registry.local_copy(registry.serving_base(champion), settings.models_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=5.0, help="requests/s for the CPU figure")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--model-dir", type=Path, help="default: the champion's base model")
    args = parser.parse_args()
    settings = get_settings()
    if settings.vllm_backend != "cpu":
        print("the spin limit is the CPU backend's default; nothing to compare here")
        return
    model_dir = args.model_dir or champion_base(settings)
    spin = settings.vllm_spin_s if settings.vllm_spin_s is not None else CPU_SPIN_S
    runs: dict[float, list[tuple[float, float]]] = {spin: [], VLLM_OWN_SPIN_S: []}
    for turn in range(args.turns):
        for spin_s in reversed(runs) if turn % 2 else runs:  # neither always starts first
            p50, cpu_ms = measure(settings, model_dir, spin_s, args.rate)
            runs[spin_s].append((p50, cpu_ms))
            print(
                f"turn {turn + 1}, spin {spin_s:g} s: p50 {p50:.1f} ms, CPU {cpu_ms:.1f} ms/request"
            )
    ours, theirs = runs[spin], runs[VLLM_OWN_SPIN_S]
    median = statistics.median
    figures = [
        Figure(
            f"vLLM CPU per request at {args.rate:g} req/s, spin {spin:g} s",
            median(c for _, c in ours),
            "vLLM's own spin (1 s)",
            median(c for _, c in theirs),
            "ms",
            note="engine core + worker, from /proc; the rest of a CPU host gets the difference",
        ),
        Figure(
            f"vLLM p50, 4 tokens, sequential, spin {spin:g} s",
            median(p for p, _ in ours),
            "vLLM's own spin (1 s)",
            median(p for p, _ in theirs),
            "ms",
            target="<= 1.10",
            note=f"medians of {args.turns} server starts each; p50 per start: spin {spin:g} s "
            + ", ".join(f"{p:.1f}" for p, _ in ours)
            + " ms; 1 s "
            + ", ".join(f"{p:.1f}" for p, _ in theirs)
            + " ms",
        ),
    ]
    for f in figures:
        print(f"{f.name}: {f.value:.1f} vs {f.baseline:.1f} {f.unit} ({f.ratio:.3f}x)")
    record(
        "vllm_spin",
        figures,
        f"one server at a time on the champion's base, {args.turns} turns each (the order "
        f"swapped each turn, medians compared), {args.rate:g} req/s for 20 s",
    )


if __name__ == "__main__":
    main()
