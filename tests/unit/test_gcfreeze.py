"""What freeze_startup leaves: start-up frozen, young collections spaced, cycles collected."""

import gc
import weakref

from healthiot.gcfreeze import YOUNG_THRESHOLD, freeze_startup


def test_start_up_is_frozen_and_later_cycles_are_still_collected() -> None:
    before = gc.get_threshold()
    try:
        freeze_startup()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]

        class Node:
            pass

        node = Node()
        node.self = node  # type: ignore[attr-defined]  # a cycle: refcounting cannot free it
        alive = weakref.ref(node)
        del node
        gc.collect()
        assert alive() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
