"""Prometheus metrics of the gateway (one registry per app, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "refinery_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "refinery_request_latency_seconds",
            "Request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "refinery_tokens", "Tokens processed", ["kind"], registry=self.registry
        )
        self.feedback = Counter(
            "refinery_feedback", "Feedback accepted", ["rating"], registry=self.registry
        )
        self.backlog = Gauge(
            "refinery_prediction_log_backlog",
            "Predictions waiting for Kafka",
            registry=self.registry,
        )
        self.merged_fallbacks = Counter(
            "refinery_merged_fallbacks",
            "Champion requests the merged server did not take (down, or no longer serving "
            "that version), answered by runtime LoRA on the replicas instead",
            registry=self.registry,
        )
        self.model_version = Gauge(
            "refinery_served_model_version",
            "Registry version being served",
            registry=self.registry,
        )
