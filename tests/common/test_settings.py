"""Settings that follow from others unless given."""

from __future__ import annotations

from refinery.common.settings import Settings


def test_clients_bootstrap_from_every_local_node_unless_told_otherwise() -> None:
    assert Settings(kafka_nodes=1).kafka_bootstrap == "127.0.0.1:9092"
    three = Settings(kafka_nodes=3, kafka_port=9300)
    assert three.kafka_bootstrap == "127.0.0.1:9300,127.0.0.1:9301,127.0.0.1:9302"
    assert Settings(kafka_nodes=3, kafka_bootstrap="kafka:9092").kafka_bootstrap == "kafka:9092"
    # Brokers advertised on another address: clients bootstrap from that one.
    assert Settings(kafka_host="10.0.0.5").kafka_bootstrap == "10.0.0.5:9092"
