"""A bounded soak and a rate ladder on a whole stack of its own (docs/RELIABILITY.md).

    python -m bench.soak                         # ladder 5..40 req/s, then 20 min at 20 req/s
    python -m bench.soak --minutes 5 --ladder ""  # a short soak alone

Ladder: simulated apps and users (services/refinery/demo/simulate.py, open loop: a request is sent
when it is due, and its latency counts from then) at each rate for --step seconds; the
highest rate that kept completions' p99 under --p99-ms, answered everything and kept up
with the schedule is the sustained rate. Soak: --minutes at --rate with one retraining
asked for halfway; every 30 s the resident memory of every process (with its children), the
monitor's consumer lag and the outbox backlog are sampled.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from bench.gateway import percentile as gateway_percentile
from bench.harness import (
    Traffic,
    ask_retrain,
    backlog,
    monitor_lag,
    outcome,
    processes,
    ready,
    rss_mib,
    running_stack,
    wait_until,
)
from refinery.demo.simulate import Request
from refinery.stack.stack import Stack

SAMPLE_EVERY_S = 30.0


def percentile(values: list[float], q: float) -> float:
    """bench/gateway.py's percentile, NaN for no values (a ladder step may answer none)."""
    return gateway_percentile(values, q) if values else float("nan")


@dataclass(frozen=True)
class Step:
    rate: float
    seconds: float
    requests: int
    errors: int
    feedback_refused: int
    p50_ms: float
    p99_ms: float

    @property
    def achieved(self) -> float:
        return self.requests / self.seconds

    def sustained(self, p99_ms: float) -> bool:
        return (
            self.errors == 0
            and self.p99_ms <= p99_ms
            and self.requests >= 0.95 * self.rate * self.seconds
        )


def summarize(rate: float, seconds: float, requests: list[Request]) -> Step:
    answered = [r.latency * 1000 for r in requests if r.status == "ok" and r.latency]
    return Step(
        rate=rate,
        seconds=seconds,
        requests=len(requests),
        errors=sum(r.status == "error" for r in requests),
        feedback_refused=sum(len(r.feedback_refusals) for r in requests),
        p50_ms=percentile(answered, 50),
        p99_ms=percentile(answered, 99),
    )


def ladder(stack: Stack, rates: list[float], step_s: float, p99_ms: float) -> list[Step]:
    steps = []
    for rate in rates:
        traffic = Traffic(stack.settings, rate)
        traffic.start()
        time.sleep(step_s)
        sim = traffic.stop()
        # Requests still pending when the traffic stopped are left out (they have no answer).
        done = [r for r in sim.requests if r.t < step_s and r.status != "pending"]
        step = summarize(rate, step_s, done)
        steps.append(step)
        print(
            f"{rate:5.0f} req/s: {step.requests} sent ({step.achieved:.1f}/s), {step.errors} "
            f"errors, p50 {step.p50_ms:.0f} ms, p99 {step.p99_ms:.0f} ms"
            f"{'' if step.sustained(p99_ms) else '  (not sustained)'}",
            flush=True,
        )
        if not step.sustained(p99_ms):
            break
        time.sleep(10)  # let the stack drain between steps
    return steps


@dataclass
class Sample:
    t: float
    rss_mib: dict[str, float]
    monitor_lag: int
    backlog: float
    errors: int


def sample(stack: Stack, traffic: Traffic) -> Sample:
    rss = {name: rss_mib(proc) for name, proc in processes(stack).items()}
    requests = traffic.requests()
    return Sample(
        t=traffic.now(),
        rss_mib=rss,
        monitor_lag=monitor_lag(stack.settings),
        backlog=backlog(stack.settings),
        errors=sum(r.status == "error" for r in requests),
    )


def soak(stack: Stack, rate: float, minutes: float) -> None:
    traffic = Traffic(stack.settings, rate)
    traffic.start()
    samples: list[Sample] = []
    trigger_id: str | None = None
    asked_at = 0.0
    end = minutes * 60
    while traffic.now() < end:
        samples.append(sample(stack, traffic))
        s = samples[-1]
        print(
            f"[{s.t:6.0f} s] lag {s.monitor_lag}, backlog {s.backlog:.0f}, errors {s.errors}, "
            f"RSS MiB {', '.join(f'{k} {v:.0f}' for k, v in s.rss_mib.items())}",
            flush=True,
        )
        if trigger_id is None and traffic.now() >= end / 2:
            trigger_id = ask_retrain(stack.settings, "bench: soak")
            asked_at = traffic.now()
        time.sleep(min(SAMPLE_EVERY_S, max(0.0, end - traffic.now())))
    samples.append(sample(stack, traffic))
    sim = traffic.stop()
    result = outcome(stack.settings, trigger_id) if trigger_id else None
    if trigger_id and result is None:
        waited = wait_until(lambda: outcome(stack.settings, trigger_id) is not None, 600)
        result = outcome(stack.settings, trigger_id) if waited is not None else "none in time"
    step = summarize(rate, end, [r for r in sim.requests if r.status != "pending"])

    first, last = samples[0], samples[-1]
    print(
        f"\nsoak: {minutes:g} min at {rate:g} req/s: {step.requests} requests, "
        f"{step.errors} errors, {step.feedback_refused} feedback refusals, "
        f"p50 {step.p50_ms:.0f} ms, p99 {step.p99_ms:.0f} ms; "
        f"retraining asked at {asked_at:.0f} s: {result}; "
        f"gateway ready at the end: {ready(stack.settings)}"
    )
    print("\n| process | RSS start (MiB) | RSS end (MiB) | max (MiB) |\n|---|---|---|---|")
    for name in first.rss_mib:
        peak = max(s.rss_mib[name] for s in samples)
        print(f"| {name} | {first.rss_mib[name]:.0f} | {last.rss_mib[name]:.0f} | {peak:.0f} |")
    lags = [s.monitor_lag for s in samples]
    print(
        f"\nmonitor lag (records): max {max(lags)}, end {lags[-1]}; outbox backlog max "
        f"{max(s.backlog for s in samples):.0f}"
    )
    per_minute: dict[int, list[float]] = {}
    for r in sim.requests:
        if r.status == "ok" and r.latency:
            per_minute.setdefault(int(r.t // 60), []).append(r.latency * 1000)
    print(
        "p99 per minute (ms): "
        + ", ".join(f"{m}: {percentile(v, 99):.0f}" for m, v in sorted(per_minute.items()))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="soak rate, requests/s")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--ladder", default="5,10,20,30,40", help="rates to climb ('' skips)")
    parser.add_argument("--step", type=float, default=60.0, help="seconds per ladder rate")
    parser.add_argument("--p99-ms", type=float, default=1000.0, help="the p99 bound")
    parser.add_argument("--port-base", type=int, default=31000)
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        help="the gateway's per-key limit, requests/s (default 0: off, so the ladder finds "
        "what the stack sustains; one app key sends ~1.7 requests per completion with "
        "ratings, so the default 50/s would cap it near 30 completions/s)",
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.ladder.split(",") if r.strip()]
    with running_stack(args.port_base, 1, keep=True, rate_limit_rps=args.rate_limit) as stack:
        if rates:
            steps = ladder(stack, rates, args.step, args.p99_ms)
            kept = [s.rate for s in steps if s.sustained(args.p99_ms)]
            print(
                f"highest sustained rate (p99 <= {args.p99_ms:.0f} ms, no errors): "
                f"{max(kept) if kept else 'none'} req/s\n",
                flush=True,
            )
        if args.minutes > 0:
            soak(stack, args.rate, args.minutes)


if __name__ == "__main__":
    main()
