"""The bridge's counters, exposed through prometheus_client (text format 0.0.4).

Counted here, never health values: messages, samples, refusals by reason, batch timings and
the consumer's backlog. The bridge counts in plain fields (``BridgeStats``, cheap on the hot
path); a collector reads them at each scrape into a registry of the process's own.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Receive-to-commit seconds: the bridge waits up to 50 ms to fill a batch, a commit takes a
# few ms, a database outage holds a batch for as long as it lasts.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; +Inf last
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


@dataclass
class BridgeStats:
    messages: int = 0  # stored for the first time
    samples: int = 0  # accepted samples of those messages
    rejected: int = 0  # samples refused by normalisation, kept in quarantine
    quarantined: int = 0  # quarantine records (whole messages, or a message's refused samples)
    duplicates: int = 0  # messages delivered again and stored nothing new
    batches: int = 0
    worker_failures: int = 0  # consume loops that failed (and were started again)
    reconnects: int = 0  # connections to the broker after the first
    healthy: bool = True  # false while the database refuses a batch
    connected: bool = False
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    quarantined_by_reason: Counter[str] = field(default_factory=Counter)
    # Weighings of shared scales: attributed, or held and why (broker_bridge/attribution.py).
    shared_scale_weighings: Counter[str] = field(default_factory=Counter)
    receive_to_commit_s: Histogram = field(default_factory=Histogram)
    # Refusal notices to devices: sent, suppressed (rate limit) or failed (notices.py).
    refusal_notices: Counter[str] = field(default_factory=Counter)
    backlog: int = 0  # messages received and waiting for a batch; set when rendered


_COUNTERS = (
    ("messages", "messages stored (first delivery)"),
    ("samples", "samples accepted and stored"),
    ("rejected", "samples refused by normalisation (kept in quarantine)"),
    ("quarantined", "quarantine records written"),
    ("duplicates", "messages delivered again, stored nothing new"),
    ("batches", "batches committed"),
    ("worker_failures", "consume loops that failed, disconnected and started again"),
    ("reconnects", "connections to the broker after the first"),
)


class BridgeCollector(Collector):
    """Reads a bridge's ``BridgeStats`` at each scrape; ``stats`` returns the current ones."""

    def __init__(self, stats: Callable[[], BridgeStats], prefix: str = "healthiot_bridge"
                 ) -> None:
        self._stats = stats
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        stats, prefix = self._stats(), self._prefix
        for name, help_text in _COUNTERS:
            yield CounterMetricFamily(f"{prefix}_{name}", help_text, value=getattr(stats, name))
        for name, label, counter, help_text in (
                ("rejected_samples_by_reason", "reason", stats.rejected_by_reason,
                 "samples refused, by reason"),
                ("quarantined_by_reason", "reason", stats.quarantined_by_reason,
                 "quarantine records, by reason"),
                ("shared_scale_weighings", "reason", stats.shared_scale_weighings,
                 "weighings of shared scales: attributed, or held for the users and why"),
                ("refusal_notices", "outcome", stats.refusal_notices,
                 "refusal notices to devices' inboxes: sent, suppressed or failed")):
            family = CounterMetricFamily(f"{prefix}_{name}", help_text, labels=[label])
            for key, n in sorted(counter.items()):
                family.add_metric([key], n)
            yield family
        for name, level, help_text in (
                ("up", stats.connected, "1 when connected to the broker"),
                ("healthy", stats.healthy, "1 when the last batch was stored"),
                ("backlog_messages", stats.backlog, "messages received, not yet in a batch")):
            yield GaugeMetricFamily(f"{prefix}_{name}", help_text, value=int(level))
        histogram = stats.receive_to_commit_s
        buckets, cumulative = [], 0
        for bound, n in zip((*histogram.buckets, float("inf")), histogram.counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            f"{prefix}_receive_to_commit_seconds",
            "from the oldest message of a batch received to the batch committed",
            buckets=buckets, sum_value=histogram.total)


def registry(stats: Callable[[], BridgeStats]) -> CollectorRegistry:
    """A registry of this process's bridge (prometheus_client's global one stays unused:
    two bridges in one process, as in the tests, must not share series)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(BridgeCollector(stats))
    return found


def render(stats: BridgeStats) -> str:
    """The whole exposition (text format 0.0.4), ``# HELP``/``# TYPE`` lines included."""
    return generate_latest(registry(lambda: stats)).decode()
