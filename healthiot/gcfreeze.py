"""Start-up objects kept out of the garbage collector's sight.

A bridge allocates container objects for every message (paho's message and properties, the
decoded pack, asyncpg's records); each 700 allocations set off a young collection, and every
tenth of those an older one, whose cost grows with everything alive: modules, the pool,
the keyring, numpy. ``gc.freeze`` moves what is alive once start-up is over into a
permanent generation that no collection walks; objects made afterwards are collected as
before. CPython's documentation suggests it for exactly this: long-lived start-up state.
"""

from __future__ import annotations

import gc


def freeze_startup() -> None:
    """Collect what start-up left as garbage, then freeze every object alive."""
    gc.collect()
    gc.freeze()
