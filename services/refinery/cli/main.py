"""``refinery``: the command line for the stack, the model and the loop (`refinery -h`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refinery.common.exceptions import RefineryError
from refinery.common.settings import get_settings

if TYPE_CHECKING:
    from refinery.common.events import AlertEvent

log = logging.getLogger("refinery")


def cmd_up(args: argparse.Namespace) -> int:
    from refinery.stack.stack import COMPONENTS, Stack

    started = time.monotonic()
    settings = get_settings()
    stack = Stack(settings)
    stack.up(tuple(args.components) or COMPONENTS)
    stack.supervise()  # from now on a process that dies is started again
    rows = stack.status()
    print(f"up in {time.monotonic() - started:.1f}s")
    _print_status(rows)
    if settings.admin_key_path.exists():
        print(f"local admin API key: {settings.admin_key_path} (mode 0600)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from refinery.stack.stack import COMPONENTS, Stack

    stopped = Stack(get_settings()).down(tuple(args.components) or COMPONENTS)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from refinery.stack.stack import Stack

    stack = Stack(get_settings())
    rows = stack.status()
    _print_status(rows)
    for name, (count, last) in sorted(stack.restarts().items()):
        print(f"restarts {name}: {count} (last {last[:19].replace('T', ' ')} UTC)")
    by_name = {r.name: r for r in rows}
    if by_name["mlflow"].healthy:
        champion = stack.champion()
        named = f"{champion.name} v{champion.version} ({champion.kind})" if champion else "none"
        print(f"champion: {named}")
        canary = stack.canary() if champion else None
        if canary is not None:
            version, share = canary
            print(f"canary: v{version} answers {share:.0%} of users (sticky per user)")
        if any(r.healthy for r in rows if r.name.startswith("kafka")):
            from refinery.cli.overview import overview  # the loop: models, windows, runs

            for line in overview(stack.settings):
                print(line)
    if any(r.healthy for r in rows if r.name.startswith("kafka")):
        lag = stack.lag()
        if not lag:
            print("consumer lag: no consumer groups yet")
        for group, topics in sorted(lag.items()):
            print(f"lag {group}: " + ", ".join(f"{t}={n}" for t, n in sorted(topics.items())))
    if not by_name["supervisor"].pid:
        print("supervisor: not running, so a process that dies stays down (`refinery up`)")
    # The supervisor is a safety net, not a part: without it the stack still serves.
    return 0 if all(r.healthy for r in rows if r.name != "supervisor") else 1


def _print_status(rows: list) -> None:
    for r in rows:
        state = "healthy" if r.healthy else ("starting/unhealthy" if r.pid else "stopped")
        print(f"  {r.name:<8} {state:<18} pid={r.pid or '-':<8} {r.address:<24} log={r.log_file}")


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from refinery.common.task import load_task
    from refinery.retrainer.bootstrap import bootstrap

    settings = get_settings()
    result = bootstrap(
        settings,
        load_task(settings.task_file),
        base=args.base,
        train_file=args.train,
        golden_file=args.golden,
        force=args.force,
    )
    v = result.version
    if result.created:
        print(
            f"registered {v.name} v{v.version} as champion (golden score {result.golden_score:.3f})"
        )
    else:
        print(f"{v.name} already has champion v{v.version}; use --force to bootstrap a new base")
    return 0


def cmd_serving_base(args: argparse.Namespace) -> int:
    """What a vLLM replica on another host runs first (a container's init step): the base
    the champion needs, from the registry, as DEST/base (a link) and DEST/base.version."""
    from refinery.common.exceptions import RegistryError
    from refinery.common.registry import ModelRegistry

    registry = ModelRegistry(get_settings())
    champion = registry.champion() if registry.exists() else None
    if champion is None:
        raise RegistryError("the registry has no champion yet; run `refinery bootstrap` first")
    base = registry.serving_base(champion)
    folder = registry.local_copy(base, args.dest)
    link = args.dest / "base"
    staging = args.dest / ".base.link"
    staging.unlink(missing_ok=True)
    staging.symlink_to(folder.name)
    staging.replace(link)
    (args.dest / "base.version").write_text(base.version + "\n")
    print(f"{link} -> {folder.name} (v{base.version}, for champion v{champion.version})")
    return 0


def cmd_try(args: argparse.Namespace) -> int:
    """One request straight to vLLM with the task's template: is the model served?"""
    import httpx

    from refinery.common.task import load_task

    settings = get_settings()
    task = load_task(settings.task_file).task
    prompt = task.render(args.text)
    started = time.monotonic()
    resp = httpx.post(
        f"{settings.vllm_url}/v1/completions",
        json={
            "model": settings.served_model_name,
            "prompt": prompt,
            "max_tokens": task.max_new_tokens,
            "temperature": 0,
        },
        timeout=60,
    )
    resp.raise_for_status()
    completion = resp.json()["choices"][0]["text"]
    print(f"prompt:     {prompt!r}")
    print(
        f"completion: {completion!r}   ({(time.monotonic() - started) * 1000:.0f} ms, "
        f"model {settings.served_model_name} at {settings.vllm_url})"
    )
    if task.kind == "classification":
        print(f"label:      {task.parse_label(completion)}")
    return 0


def _client_key() -> str:
    """REFINERY_CLIENT_API_KEY, else the local admin key `refinery up` wrote."""
    import os

    settings = get_settings()
    key = os.environ.get("REFINERY_CLIENT_API_KEY")
    if key:
        return key
    if settings.admin_key_path.exists():
        return settings.admin_key_path.read_text().strip()
    raise RefineryError(
        f"no API key: set REFINERY_CLIENT_API_KEY or run `refinery up` "
        f"(it writes {settings.admin_key_path})"
    )


def cmd_ask(args: argparse.Namespace) -> int:
    """Ask the gateway (as an app would, with the openai client), then rate the answer."""
    import httpx
    import openai

    from refinery.common.task import load_task

    settings = get_settings()
    task = load_task(settings.task_file).task
    key = _client_key()
    client = openai.OpenAI(base_url=f"{settings.gateway_url}/v1", api_key=key, max_retries=1)
    prompt = task.render(args.text) if not args.raw else args.text
    try:
        answer = client.completions.create(
            model=settings.registered_model,
            prompt=prompt,
            max_tokens=task.max_new_tokens,
            temperature=0,
            user=args.user,
            extra_body={"segment": args.segment} if args.segment else None,
        )
    except openai.APIStatusError as exc:
        print(f"the gateway said {exc.status_code}: {exc.message}", file=sys.stderr)
        return 1
    except openai.APIConnectionError:
        print(f"no gateway at {settings.gateway_url}; start it with `refinery up`", file=sys.stderr)
        return 1
    print(f"answer: {answer.choices[0].text.strip()!r}   (model {answer.model}, id {answer.id})")
    rating, correction = args.rating, args.correction
    if rating is None and sys.stdin.isatty():
        reply = input("Was this right? [u]p / [d]own / enter to skip: ").strip().lower()
        rating = {"u": "up", "up": "up", "d": "down", "down": "down"}.get(reply)
        if rating == "down":
            correction = input("The right answer (enter to skip): ").strip() or None
    if rating is None:
        return 0
    if correction:
        try:
            correction = task.correction_target(correction)
        except ValueError as exc:
            print(f"feedback not sent: {exc}", file=sys.stderr)
            return 1
    resp = httpx.post(
        f"{settings.gateway_url}/v1/feedback",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "prediction_id": answer.id,
            "rating": rating,
            "correction": correction,
            "user": args.user,
        },
        timeout=30,
    )
    if resp.status_code != 202:
        print(f"feedback not stored ({resp.status_code}): {resp.text}", file=sys.stderr)
        return 1
    print(f"thanks: thumbs-{rating} recorded")
    return 0


def _admin(command: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST an ops command to the gateway's admin API with the client key; the answer's body.

    A refusal (4xx/5xx) raises with the gateway's own message."""
    import httpx

    settings = get_settings()
    url = f"{settings.gateway_url}/v1/admin/{command}"
    headers = {"Authorization": f"Bearer {_client_key()}"}
    try:
        # Long enough for MLflow's own retries and a Kafka send that waits out a leader change.
        resp = httpx.post(url, headers=headers, json=body, timeout=180)
    except httpx.TransportError as exc:
        raise RefineryError(
            f"no gateway at {settings.gateway_url} ({type(exc).__name__}); start it with "
            "`refinery up`"
        ) from exc
    if resp.is_success:
        return resp.json()  # type: ignore[no-any-return]
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = resp.text[:500]
    retry = resp.headers.get("Retry-After")
    raise RefineryError(
        f"the gateway said {resp.status_code}: {message}"
        + (f" (retry after {retry} s)" if retry else "")
    )


def cmd_retrain(args: argparse.Namespace) -> int:
    """A manual retrain trigger, sent through the gateway to the topic the monitor uses."""
    from refinery.inference.protocol import TriggerAccepted

    body = {"reason": args.reason, "trigger_id": args.trigger_id}
    sent = TriggerAccepted.model_validate(_admin("retrain", body))
    print(f"trigger {sent.trigger_id} sent ({sent.topic}[{sent.partition}]@{sent.offset})")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Ops: make a registered version champion, the same path the retrainer's gate takes."""
    from refinery.common.events import ModelEvent

    event = ModelEvent.model_validate(
        _admin("promote", {"version": args.version, "reason": args.reason})
    )
    previous = f"v{event.previous_version}" if event.previous_version else "none"
    print(f"v{event.version} is champion (previous {previous}); served as {event.served_name}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Ops: champion back to the 'previous' alias."""
    from refinery.common.events import ModelEvent

    event = ModelEvent.model_validate(_admin("rollback", {"reason": args.reason}))
    print(f"rolled back: v{event.version} is champion again (was v{event.previous_version})")
    return 0


def cmd_canary_stop(args: argparse.Namespace) -> int:
    """Ops: take the running canary off live traffic (promote its version to keep it)."""
    from refinery.common.events import ModelEvent

    event = ModelEvent.model_validate(_admin("canary/stop", {"reason": args.reason}))
    print(f"canary v{event.version} stopped; v{event.previous_version} answers everyone")
    return 0


# Requests/s when --rate is not given: a free-text reply (~30 tokens) costs vLLM several
# times the decoding of a label, and on a small host the monitor embeds every window too.
DEFAULT_RATE = {"classification": 20.0, "generation": 6.0, "chat": 6.0}


def _simulation_config(args: argparse.Namespace) -> Any:
    from refinery.common.task import load_task
    from refinery.demo.simulate import SimulationConfig

    rate = args.rate or DEFAULT_RATE[load_task(get_settings().task_file).task.kind]
    return SimulationConfig(
        rate=rate,
        shift_at_s=args.shift_at,
        max_duration_s=args.max_duration,
        after_promotion_s=args.after_promotion,
        seed=args.seed,
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    """Play apps and users against the running gateway; print the task metric by phase
    (accuracy for a label, chrF for free text) and the share users rated up."""
    import asyncio

    from refinery.common.task import load_task
    from refinery.demo.simulate import accuracy, simulate, until_promoted_then

    settings = get_settings()
    config = _simulation_config(args)
    sim = asyncio.run(
        simulate(
            settings.gateway_url,
            _client_key(),
            settings.registered_model,
            load_task(settings.task_file).task,
            config,
            done=until_promoted_then(config.after_promotion_s)
            if args.until_promoted
            else (lambda _: False),
        )
    )
    out = args.out or settings.var_dir / "demo" / "requests.jsonl"
    sim.save(out)
    for name, part in (
        ("before shift", [r for r in sim.requests if r.t < config.shift_at_s]),
        ("after shift", [r for r in sim.requests if r.t >= config.shift_at_s]),
    ):
        for domain in ("retail", "smart_home"):
            requests = [r for r in part if r.domain == domain]
            value, liked = sim.metric.of(requests), accuracy(requests)
            if value is not None and liked is not None:
                print(
                    f"{name:<13} {domain:<11} {sim.metric.name} {value:.{sim.metric.digits}f}"
                    + (f"  (rated right: {liked:.3f})" if sim.metric.graded else "")
                )
    print(f"{len(sim.requests)} requests, {sim.feedback_sent} ratings; written to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The closed loop: stack up, traffic through a shift, until a retrained model serves."""
    from refinery.demo.loop import run_demo

    return run_demo(get_settings(), _simulation_config(args), None, fresh=args.fresh)


def cmd_review(args: argparse.Namespace) -> int:
    """Label thumbs-down examples that have no correction (an annotation queue)."""
    import getpass

    from refinery.cli.review import review
    from refinery.common.task import load_task

    settings = get_settings()
    task_file = load_task(settings.task_file)
    reviewer = args.reviewer or getpass.getuser()
    result = review(
        settings, task_file.task, task_file.feedback, input, print, reviewer, args.limit
    )
    print(f"\n{result.labeled} labeled, {result.skipped} skipped, of {result.queued} waiting")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """Print drift alerts and decisions (promotions, rejections, retraining runs,
    restarts) in the order they came; with --follow, keep printing new ones."""
    import uuid

    from refinery.common.decisions import lines
    from refinery.common.events import AlertEvent, DecisionEvent
    from refinery.common.kafka import EventConsumer
    from refinery.common.topics import Stream

    settings = get_settings()
    shown = 0
    with EventConsumer(
        settings, [Stream.ALERTS, Stream.DECISIONS], group_id=f"cli-alerts-{uuid.uuid4()}"
    ) as consumer:
        idle = 0
        while args.follow or idle < 3:
            batch = consumer.poll(timeout_ms=1000)
            idle = 0 if batch else idle + 1
            for item in sorted(batch, key=lambda r: r.event.occurred_at):
                event = item.event
                when = f"{event.occurred_at:%Y-%m-%d %H:%M:%S}"
                if isinstance(event, DecisionEvent):
                    out = lines(event)
                else:
                    assert isinstance(event, AlertEvent)
                    out = _alert_lines(event)
                print(f"{when} {out[0]}", *out[1:], sep="\n", flush=True)
                shown += 1
    if not shown:
        print("no alerts or decisions")
    return 0


def _alert_lines(alert: AlertEvent) -> list[str]:
    columns = ", ".join(alert.drifted_columns) or "-"
    window = f"{alert.window_start:%H:%M:%S}-{alert.window_end:%H:%M:%S}"
    report = f" report {alert.report_url}" if alert.report_url else ""
    since = f"since {alert.episode_start:%Y-%m-%d %H:%M:%S}" if alert.episode_start else ""
    if alert.resolved:
        return [
            f"RESOLVED {alert.episode_kind} drift episode {since} (stable window {window}, "
            f"reference v{alert.reference_version}){report}"
        ]
    told = f" [ops notified: {alert.notice}]" if alert.notice else ""
    out = [
        f"{alert.severity.upper()} {alert.episode_kind} drift in {columns} (window {window}, "
        f"{alert.window_size} predictions, reference v{alert.reference_version}){told}{report}"
    ]
    for m in alert.metrics:
        if m.drifted:
            out.append(f"    {m.column}: {m.method} {m.score:.4g} (threshold {m.threshold:g})")
    return out


def cmd_schemas(args: argparse.Namespace) -> int:
    from refinery.common.events import SCHEMA_TYPES, schema_file_name, schema_of
    from refinery.common.resources import packaged
    from refinery.common.settings import IN_CHECKOUT

    if args.write and not IN_CHECKOUT:
        print("refinery schemas --write rewrites schemas/ in a checkout, not an installed package")
        return 2
    stale = []
    for event_type in SCHEMA_TYPES:
        path = packaged("schemas", schema_file_name(event_type))
        text = json.dumps(schema_of(event_type), indent=2, sort_keys=True) + "\n"
        if args.write:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(path.name)
    if stale:
        print(f"out of date: {', '.join(stale)}; run `refinery schemas --write`")
        return 1
    print("schemas written" if args.write else "schemas match the models")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refinery", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add(
        "up",
        cmd_up,
        "start kafka, mlflow, vllm (bootstrapping a model if none), gateway, monitor, retrainer",
    )
    p.add_argument(
        "components",
        nargs="*",
        metavar="COMPONENT",
        help="only these of kafka, mlflow, vllm, gateway, monitor, retrainer (default: all)",
    )
    p = add("down", cmd_down, "stop what `up` started (default: everything)")
    p.add_argument(
        "components",
        nargs="*",
        metavar="COMPONENT",
        help="only these of kafka, mlflow, vllm, gateway, monitor, retrainer",
    )
    add("status", cmd_status, "each process, the champion version, consumer lag")
    p = add("bootstrap", cmd_bootstrap, "register version 1 of the model and make it champion")
    p.add_argument("--base", help="Hugging Face model path or id (default: build the offline base)")
    p.add_argument("--train", type=Path, help="JSONL of prompt/completion[/segment] to train on")
    p.add_argument("--golden", type=Path, help="JSONL held out as the frozen test set")
    p.add_argument(
        "--force", action="store_true", help="register a new base even if a champion exists"
    )
    p = add(
        "serving-base",
        cmd_serving_base,
        "fetch the base model the champion needs from the registry (a vLLM replica's first step)",
    )
    p.add_argument("dest", type=Path, help="folder: gets base (a link) and base.version")
    p = add("try", cmd_try, "send one ticket text straight to vLLM and print the answer")
    p.add_argument("text")
    p = add("ask", cmd_ask, "ask the gateway one ticket, then give it a thumbs up or down")
    p.add_argument("text")
    p.add_argument(
        "--raw", action="store_true", help="send TEXT as the prompt, without the task template"
    )
    p.add_argument("--user", default="cli", help="who is asking (for feedback)")
    p.add_argument("--segment", help="traffic segment to tag the prediction with")
    p.add_argument("--rating", choices=["up", "down"], help="rate without asking")
    p.add_argument("--correction", help="with --rating down: the right answer")
    p = add("retrain", cmd_retrain, "ask the retrainer for a new fine-tune now (admin key)")
    p.add_argument("--reason", required=True, help="why (kept with the trigger and the run)")
    p.add_argument("--trigger-id", help="idempotency key: the same id trains once")
    p = add("promote", cmd_promote, "make VERSION the champion, previous one kept (admin key)")
    p.add_argument("version")
    p.add_argument("--reason", default="ops decision", help="kept with the model event")
    p = add("rollback", cmd_rollback, "make the previous champion champion again (admin key)")
    p.add_argument("--reason", default="ops decision", help="kept in the gateway's log")
    p = add(
        "canary-stop",
        cmd_canary_stop,
        "take the running canary off live traffic, rejected (admin key; `promote` keeps it)",
    )
    p.add_argument("--reason", default="ops decision", help="kept with the model event")

    def traffic_options(p: argparse.ArgumentParser, max_duration: float) -> None:
        p.add_argument(
            "--rate",
            type=float,
            default=None,
            help="requests per second (default: 20 for a label task, 6 for free text)",
        )
        p.add_argument("--shift-at", type=float, default=60.0, help="seconds before the shift")
        p.add_argument("--max-duration", type=float, default=max_duration, help="seconds")
        p.add_argument(
            "--after-promotion", type=float, default=45.0, help="seconds to go on once served"
        )
        p.add_argument("--seed", type=int, default=0)

    p = add("simulate", cmd_simulate, "play apps and users against the gateway")
    traffic_options(p, max_duration=120.0)
    p.add_argument("--until-promoted", action="store_true", help="stop once a new version serves")
    p.add_argument("--out", type=Path, help="JSONL of every request (default var/demo/)")
    p = add("demo", cmd_demo, "the closed loop: drift, feedback, retraining, recovery")
    traffic_options(p, max_duration=600.0)
    p.add_argument(
        "--fresh", action="store_true", help="stop the stack and start from an empty var/ first"
    )
    p = add("review", cmd_review, "label uncorrected thumbs-down and held corrections")
    p.add_argument("--reviewer", help="your name, kept with each label (default: login name)")
    p.add_argument("--limit", type=int, help="at most this many examples")
    p = add("alerts", cmd_alerts, "print drift alerts and decisions (promotions, retraining...)")
    p.add_argument("--follow", action="store_true", help="keep printing new ones")
    p = add("schemas", cmd_schemas, "check (or --write) schemas/*.json against the event models")
    p.add_argument("--write", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for chatty in ("httpx", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)  # client chatter; errors still show
    try:
        return int(args.func(args))
    except RefineryError as exc:
        print(f"refinery {args.command}: {exc}", file=sys.stderr)
        return 2
