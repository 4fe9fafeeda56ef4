"""The device life cycle: states and the transitions allowed between them.

    provisioned ──pair──> paired ──unpair / revoke──> revoked ──> retired
         │                  │                                       ^
         ├──revoke──> revoked                                       │
         └──────────────────┴──────────retire───────────────────────┘

Revoked and retired are final for the certificate: a revoked device never sends again under
that identity (a returned device is provisioned anew, with a new id and certificate).
Retired is the end of life (scrapped, returned); revoked is lost, stolen or unpaired.
"""

from __future__ import annotations

from devices.errors import InvalidTransition

STATES = ("provisioned", "paired", "revoked", "retired")
TRANSITIONS: dict[str, frozenset[str]] = {
    "provisioned": frozenset({"paired", "revoked", "retired"}),
    "paired": frozenset({"revoked", "retired"}),
    "revoked": frozenset({"retired"}),
    "retired": frozenset(),
}
OUT_OF_SERVICE = frozenset({"revoked", "retired"})  # certificates revoked, data refused


def check_transition(device_id: str, current: str, wanted: str) -> None:
    """Return if ``current`` may become ``wanted``; raise InvalidTransition otherwise."""
    if wanted not in STATES:
        raise ValueError(f"unknown device state {wanted!r}")
    allowed = TRANSITIONS[current]
    if wanted not in allowed:
        raise InvalidTransition(device_id, current, wanted, allowed)
