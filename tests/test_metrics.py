"""The node's plain-number histograms, as Prometheus reads them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from node.metrics import AckLatency, Buckets


def test_buckets_count_each_value_once_under_every_bound_it_does_not_pass():
    buckets = Buckets((0.001, 0.01))
    for value in (0.0005, 0.001, 0.002, 0.5):  # a bound itself counts as "le"
        buckets.add(value)
    family = buckets.family("x_seconds", "x")
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("x_seconds_bucket", "0.001")] == 2
    assert samples[("x_seconds_bucket", "0.01")] == 3
    assert samples[("x_seconds_bucket", "+Inf")] == 4
    assert samples[("x_seconds_count", None)] == 4
    assert abs(samples[("x_seconds_sum", None)] - 0.5035) < 1e-12


def test_ack_latency_in_the_text_format():
    registry = CollectorRegistry(auto_describe=False)
    acks = AckLatency()
    registry.register(acks)
    acks.observe([0.0004, 0.003, 0.003])
    lines = set(generate_latest(registry).decode().splitlines())
    assert "# TYPE lanchat_ack_latency_seconds histogram" in lines
    assert 'lanchat_ack_latency_seconds_bucket{le="0.0005"} 1.0' in lines
    assert 'lanchat_ack_latency_seconds_bucket{le="0.005"} 3.0' in lines
    assert "lanchat_ack_latency_seconds_count 3.0" in lines
