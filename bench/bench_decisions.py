"""Side-by-side measurements behind two architecture decisions, in one run.

1. Normalise a whole batch at once (decision 6): the same 500 SenML packs normalised in one
   call versus one call per pack.
2. Seal segments, not samples (decision 3): bytes per heart-rate sample when an hour of 1 Hz
   data is packed and sealed once, versus each sample sealed on its own.

Ratios, not absolute times, are what to compare: this machine is shared and noisy.
Run with `make bench`.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable

import numpy as np

from storage.crypto import seal
from storage.segments import Samples, pack
from vitals.normalise import normalise
from vitals.senml import decode_json, encode_json

BATCH = 500  # messages, the bridge's default batch
PER_MESSAGE = 10  # heart-rate samples per watch message
ROUNDS = 20


def _best_of(rounds: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_normalise() -> None:
    now = time.time()
    packs = [decode_json(encode_json("w/", [("heart_rate", "/min", now - PER_MESSAGE + i,
                                               60.0 + i) for i in range(PER_MESSAGE)]),
                         received_at=now) for _ in range(BATCH)]
    received = [now] * BATCH
    batched = _best_of(ROUNDS, lambda: normalise(packs, received))
    one_by_one = _best_of(ROUNDS, lambda: [normalise([p], [now]) for p in packs])
    per_msg_b, per_msg_1 = batched / BATCH * 1e6, one_by_one / BATCH * 1e6
    print(f"normalise {BATCH} msgs x {PER_MESSAGE} samples: batched {per_msg_b:.1f} us/msg, "
          f"one call per message {per_msg_1:.1f} us/msg, ratio {one_by_one / batched:.1f}x")


def bench_segment_size() -> None:
    rng = np.random.default_rng(1)
    n = 3600
    t = (int(time.time()) * 1000 + np.arange(n, dtype=np.int64) * 1000)
    values = np.round(62 + np.cumsum(rng.normal(0, 0.3, n)), 1)
    key = secrets.token_bytes(32)
    segment = seal(key, pack(Samples(t, values, np.zeros(n, np.uint8))), b"aad")
    per_sample = sum(len(seal(key, struct.pack("<qd", int(ti), float(v)), b"aad"))
                     for ti, v in zip(t, values, strict=True))
    print(f"an hour of 1 Hz heart rate: sealed segment {len(segment) / n:.2f} B/sample, "
          f"sealed per sample {per_sample / n:.2f} B/sample, ratio "
          f"{per_sample / len(segment):.1f}x")


if __name__ == "__main__":
    bench_normalise()
    bench_segment_size()
