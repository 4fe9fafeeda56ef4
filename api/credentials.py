"""Password and one-time code, checked the same way for patients and clinicians."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from api import passwords, totp
from api.limits import SignInGuard


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


async def sign_in(guard: SignInGuard, account: str, client: str, password_hash: str | None,
                  password: str, code: str | None,
                  secret: Callable[[], Awaitable[bytes]] | None,
                  accept_step: Callable[[int], Awaitable[bool]] | None) -> bool:
    """Check the password, then ``code`` when one is given, counting each failure where
    the guard wants it (raises TooMany first when this attempt must wait). The code is
    checked only after a right password, so a refusal never tells which factor failed;
    a wrong code counts against the account whatever the password was. ``secret`` and
    ``accept_step`` are None for an unknown account (whose password check fails)."""
    guard.check(account, client, with_code=code is not None)
    if not await check_password(password_hash, password):
        guard.password_failed(account, client)
        return False
    guard.password_ok(account, client)
    if code is None:
        return True
    assert secret is not None and accept_step is not None  # a known account
    if not await check_code(await secret(), code, accept_step):
        guard.code_failed(account, client)
        return False
    guard.code_ok(account)
    return True
