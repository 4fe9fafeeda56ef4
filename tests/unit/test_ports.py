"""Ports for test and demo servers: one process never hands out the same port twice, even
though each probe socket is closed before the server binds it."""

from __future__ import annotations

from healthiot.localservers import free_port, stable_port

DRAWS = 500  # drawn at random from ~14,000-16,000 ports: ~8 repeats expected otherwise


def test_free_ports_handed_out_are_all_different() -> None:
    ports = [free_port() for _ in range(DRAWS)]
    assert len(set(ports)) == DRAWS


def test_stable_ports_handed_out_are_all_different_and_not_ephemeral_ones() -> None:
    ephemeral = {free_port() for _ in range(10)}
    ports = [stable_port() for _ in range(DRAWS)]
    assert len(set(ports)) == DRAWS and not ephemeral & set(ports)
