"""Password and one-time code, checked the same way for patients and clinicians."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from api import passwords, totp


@functools.cache
def _dummy_hash() -> str:
    return passwords.hash_password("dummy password for timing only")


async def check(account: tuple[str, Callable[[], Awaitable[bytes]]] | None, password: str,
                code: str) -> bool:
    """True when the password matches the account's hash and the code is current for its
    TOTP secret; ``account`` is (password hash, secret getter), None when unknown. An
    unknown account still costs one hash, so timing does not reveal which exist."""
    stored = account[0] if account else _dummy_hash()
    ok = await asyncio.to_thread(passwords.verify_password, stored, password)
    if account is None or not ok:
        return False
    return totp.verify(await account[1](), code) is not None
