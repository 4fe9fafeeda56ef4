"""The bridge's counters, in the Prometheus text exposition format (version 0.0.4).

Counted here, never health values: messages, samples, refusals by reason, batch timings and
the consumer's backlog. A dozen series do not justify a client library and its global
registry; the format is a few lines of text.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

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
)


def render(stats: BridgeStats, prefix: str = "healthiot_bridge") -> str:
    """The whole exposition, ``# HELP``/``# TYPE`` lines included."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> str:
        full = f"{prefix}_{name}"
        lines.extend((f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"))
        return full

    for name, help_text in _COUNTERS:
        full = family(f"{name}_total", "counter", help_text)
        lines.append(f"{full} {getattr(stats, name)}")
    for name, counter, help_text in (
            ("rejected_samples_by_reason_total", stats.rejected_by_reason,
             "samples refused, by reason"),
            ("quarantined_by_reason_total", stats.quarantined_by_reason,
             "quarantine records, by reason"),
            ("shared_scale_weighings_total", stats.shared_scale_weighings,
             "weighings of shared scales: attributed, or held for the users and why"),
            ("refusal_notices_total", stats.refusal_notices,
             "refusal notices to devices' inboxes: sent, suppressed or failed")):
        full = family(name, "counter", help_text)
        lines.extend(f'{full}{{reason="{_label(reason)}"}} {n}'
                     for reason, n in sorted(counter.items()))
    for name, value, help_text in (
            ("up", stats.connected, "1 when connected to the broker"),
            ("healthy", stats.healthy, "1 when the last batch was stored"),
            ("backlog_messages", stats.backlog, "messages received, not yet in a batch")):
        full = family(name, "gauge", help_text)
        lines.append(f"{full} {int(value)}")
    histogram = stats.receive_to_commit_s
    full = family("receive_to_commit_seconds", "histogram",
                  "from the oldest message of a batch received to the batch committed")
    cumulative = 0
    for bound, n in zip((*histogram.buckets, float("inf")), histogram.counts, strict=True):
        cumulative += n
        le = "+Inf" if bound == float("inf") else repr(bound)
        lines.append(f'{full}_bucket{{le="{le}"}} {cumulative}')
    lines += [f"{full}_sum {histogram.total!r}", f"{full}_count {histogram.count}"]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
