"""``refinery``: up, down, status, bootstrap, try, schemas."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from services.common.exceptions import RefineryError
from services.common.settings import get_settings

log = logging.getLogger("refinery")


def cmd_up(args: argparse.Namespace) -> int:
    from services.stack.stack import COMPONENTS, Stack

    started = time.monotonic()
    stack = Stack(get_settings())
    rows = stack.up(tuple(args.components) or COMPONENTS)
    print(f"up in {time.monotonic() - started:.1f}s")
    _print_status(rows)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from services.stack.stack import Stack

    stopped = Stack(get_settings()).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from services.stack.stack import Stack

    stack = Stack(get_settings())
    rows = stack.status()
    _print_status(rows)
    by_name = {r.name: r for r in rows}
    if by_name["mlflow"].healthy:
        champion = stack.champion()
        named = f"{champion.name} v{champion.version} ({champion.kind})" if champion else "none"
        print(f"champion: {named}")
    if any(r.healthy for r in rows if r.name.startswith("kafka")):
        lag = stack.lag()
        if not lag:
            print("consumer lag: no consumer groups yet")
        for group, topics in sorted(lag.items()):
            print(f"lag {group}: " + ", ".join(f"{t}={n}" for t, n in sorted(topics.items())))
    return 0 if all(r.healthy for r in rows) else 1


def _print_status(rows: list) -> None:
    for r in rows:
        state = "healthy" if r.healthy else ("starting/unhealthy" if r.pid else "stopped")
        print(f"  {r.name:<8} {state:<18} pid={r.pid or '-':<8} {r.address:<24} log={r.log_file}")


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from services.common.task import load_task
    from services.retrainer.bootstrap import bootstrap

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


def cmd_try(args: argparse.Namespace) -> int:
    """One request straight to vLLM with the task's template: is the model served?"""
    import httpx

    from services.common.task import load_task

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


def cmd_schemas(args: argparse.Namespace) -> int:
    from services.common.events import EVENT_TYPES, schema_of
    from services.common.settings import REPO_ROOT

    stale = []
    for event_type in EVENT_TYPES:
        path = REPO_ROOT / "schemas" / f"{event_type.schema_name}.v1.json"
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
        "start kafka, mlflow and vllm (bootstrapping a model if none), wait for health",
    )
    p.add_argument(
        "components",
        nargs="*",
        metavar="COMPONENT",
        help="only these of kafka, mlflow, vllm (default: all, in dependency order)",
    )
    add("down", cmd_down, "stop everything `up` started")
    add("status", cmd_status, "each process, the champion version, consumer lag")
    p = add("bootstrap", cmd_bootstrap, "register version 1 of the model and make it champion")
    p.add_argument("--base", help="Hugging Face model path or id (default: build the offline base)")
    p.add_argument("--train", type=Path, help="JSONL of prompt/completion[/segment] to train on")
    p.add_argument("--golden", type=Path, help="JSONL held out as the frozen test set")
    p.add_argument(
        "--force", action="store_true", help="register a new base even if a champion exists"
    )
    p = add("try", cmd_try, "send one ticket text straight to vLLM and print the answer")
    p.add_argument("text")
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
    for chatty in ("httpx", "kafka", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except RefineryError as exc:
        print(f"refinery {args.command}: {exc}", file=sys.stderr)
        return 2
