"""Start-up objects kept out of the garbage collector's sight, and young collections spaced.

A bridge allocates container objects for every message (the message and its properties,
the decoded pack, asyncpg's records); each 700 allocations set off a young collection, and
every tenth of those an older one, whose cost grows with everything alive: modules, the
pool, the keyring, numpy. ``gc.freeze`` moves what is alive once start-up is over into a
permanent generation that no collection walks; objects made afterwards are collected as
before. CPython's documentation suggests it for exactly this: long-lived start-up state.

A batch of 500 messages still makes tens of thousands of short-lived containers, nearly all
freed by reference counting as soon as the batch is stored; a young collection every 700
walked the same live batch again and again. Every 20,000, the bridge drained 0.5-5% more
messages a second at 60 samples a message (the one-worker phase of bench/bench_ingest.py,
three times each way, interleaved in one process), and the garbage it leaves waiting is a
few megabytes at most.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000  # allocations between two young collections; CPython's is 700


def freeze_startup() -> None:
    """Collect what start-up left as garbage, freeze every object alive, and space the
    young collections."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
