"""Serving a process's Prometheus metrics on a port of its own (the gateway serves its
own at ``/metrics`` through FastAPI; the monitor and the retrainer use this)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


def serve_metrics(registry: CollectorRegistry, host: str, port: int, what: str) -> bool:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread; False if
    ``port`` is 0 (off) or taken: a second worker on one host runs without, and says so."""
    if not port:
        return False
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("%s: metrics not served on %s:%d (%s)", what, host, port, exc)
        return False
    log.info("%s: metrics on http://%s:%d/metrics", what, host, port)
    return True
