"""The monitor bench's baseline: a bare faust worker on the same topics that decodes each
record's JSON and counts, nothing else (what any faust worker pays before the monitor's
own work). Run by ``bench/monitor.py`` as ``python -m faust -A bench.faust_count worker``;
told where to read and write by environment variables, as the monitor is by its settings.

When it has counted ``BENCH_COUNT_TOTAL`` records it writes the rate to
``BENCH_COUNT_OUT``: records over the time from its first record to its last, so start-up
and the group join are left out, as they are for the monitor.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import faust

BOOTSTRAP = os.environ["REFINERY_KAFKA_BOOTSTRAP"]
TOPICS = os.environ["BENCH_COUNT_TOPICS"].split(",")
TOTAL = int(os.environ["BENCH_COUNT_TOTAL"])
OUT = Path(os.environ["BENCH_COUNT_OUT"])

app = faust.App(
    os.environ["BENCH_COUNT_APP_ID"],
    broker=[f"kafka://{server}" for server in BOOTSTRAP.split(",")],
    store="memory://",
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(*TOPICS, value_serializer="raw")
seen = {"count": 0, "first": 0.0}


@app.agent(source)
async def count(stream: Any) -> None:
    async for value in stream:
        json.loads(value)
        seen["count"] += 1
        if seen["count"] == 1:
            seen["first"] = time.perf_counter()
        elif seen["count"] == TOTAL:
            rate = (TOTAL - 1) / (time.perf_counter() - seen["first"])
            OUT.write_text(json.dumps({"events_per_s": rate, "count": TOTAL}))
