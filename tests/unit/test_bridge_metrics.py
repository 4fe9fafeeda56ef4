"""The bridge's Prometheus exposition: well-formed lines, cumulative buckets, escaped labels."""

from __future__ import annotations

import re

from broker_bridge.metrics import LATENCY_BUCKETS_S, BridgeStats, Histogram, render

SAMPLE = re.compile(r'^[a-z_]+(\{[a-z]+="(?:[^"\\]|\\.)*"\})? -?[0-9.e+-]+$'
                    r'|^[a-z_]+\{le="\+Inf"\} \d+$')


def test_every_line_is_a_comment_or_a_sample_and_each_family_is_typed() -> None:
    stats = BridgeStats(messages=3, samples=30, connected=True)
    stats.quarantined_by_reason.update(["malformed", "malformed", "device_revoked"])
    text = render(stats)
    assert text.endswith("\n")
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
        elif not line.startswith("# HELP "):
            assert SAMPLE.match(line), line
            name = line.split("{")[0].split(" ")[0]
            assert name in families or name.rsplit("_", 1)[0] in families, line
    assert "healthiot_bridge_messages_total 3.0" in text
    assert 'healthiot_bridge_quarantined_by_reason_total{reason="malformed"} 2.0' in text
    assert "healthiot_bridge_up 1.0" in text and "healthiot_bridge_healthy 1.0" in text


def test_histogram_buckets_are_cumulative_and_end_with_the_count() -> None:
    histogram = Histogram()
    for value in (0.001, 0.02, 0.02, 7.0, 120.0):
        histogram.observe(value)
    stats = BridgeStats(receive_to_commit_s=histogram)
    text = render(stats)
    buckets = [int(m.group(2)) for m in re.finditer(
        r'receive_to_commit_seconds_bucket\{le="([^"]+)"\} (\d+)', text)]
    assert len(buckets) == len(LATENCY_BUCKETS_S) + 1
    assert buckets == sorted(buckets) and buckets[-1] == 5
    assert buckets[0] == 1  # le=0.005 holds 0.001 only
    assert "healthiot_bridge_receive_to_commit_seconds_count 5.0" in text
    assert "healthiot_bridge_receive_to_commit_seconds_sum 127.041" in text


def test_label_values_are_escaped() -> None:
    stats = BridgeStats()
    stats.rejected_by_reason['odd "reason"\\x'] = 1
    assert r'{reason="odd \"reason\"\\x"} 1' in render(stats)


def test_shared_scale_weighings_are_counted_by_reason() -> None:
    stats = BridgeStats()
    stats.shared_scale_weighings.update(["attributed", "attributed", "ambiguous"])
    text = render(stats)
    assert "# TYPE healthiot_bridge_shared_scale_weighings_total counter" in text
    assert 'healthiot_bridge_shared_scale_weighings_total{reason="attributed"} 2.0' in text
    assert 'healthiot_bridge_shared_scale_weighings_total{reason="ambiguous"} 1.0' in text


def test_each_bridge_has_a_registry_of_its_own_read_at_each_scrape() -> None:
    from prometheus_client import REGISTRY, generate_latest

    from broker_bridge.metrics import registry
    one, two = BridgeStats(messages=1), BridgeStats(messages=2)
    first, second = registry(lambda: one), registry(lambda: two)
    one.messages = 5  # counted after the registry was made: seen at the next scrape
    assert b"healthiot_bridge_messages_total 5.0" in generate_latest(first)
    assert b"healthiot_bridge_messages_total 2.0" in generate_latest(second)
    assert b"healthiot_bridge" not in generate_latest(REGISTRY)  # the global one is unused


def test_refusal_notices_are_counted_by_outcome() -> None:
    stats = BridgeStats()
    stats.refusal_notices.update({"sent": 10, "suppressed": 290})
    text = render(stats)
    assert 'healthiot_bridge_refusal_notices_total{outcome="suppressed"} 290.0' in text
