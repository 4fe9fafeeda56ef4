"""Password and one-time code, checked the same way for patients and clinicians."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from api import passwords, totp


@functools.cache
def _dummy_hash() -> str:
    return passwords.hash_password("dummy password for timing only")


async def check_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches. An unknown account (None) still costs one hash, so
    timing does not reveal which accounts exist."""
    stored = password_hash if password_hash is not None else _dummy_hash()
    ok = await asyncio.to_thread(passwords.verify_password, stored, password)
    return ok and password_hash is not None


async def check_code(secret: bytes, code: str,
                     accept_step: Callable[[int], Awaitable[bool]]) -> bool:
    """True when ``code`` is current for ``secret`` and its time step was not used before:
    ``accept_step`` records the step atomically and says False for a replay."""
    step = totp.verify(secret, code)
    return step is not None and await accept_step(step)
