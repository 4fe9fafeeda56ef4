"""The real application served over TLS with the API's own context, and aiohttp clients
that reach it from chosen loopback addresses (127.0.0.2, ...), so that tests can act as
several client addresses at once."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from healthiot.localservers import free_port
from healthiot.services import serve_api, server_tls
from tests.conftest import Pki


@dataclass
class Https:
    port: int
    ca_file: str
    _stack: AsyncExitStack
    _clients: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"

    async def client(self, address: str = "127.0.0.1") -> aiohttp.ClientSession:
        """A session whose connections come from ``address`` (any 127.0.0.0/8 address)."""
        if address not in self._clients:
            context = ssl.create_default_context(cafile=self.ca_file)
            connector = aiohttp.TCPConnector(ssl=context, local_addr=(address, 0))
            self._clients[address] = await self._stack.enter_async_context(
                aiohttp.ClientSession(base_url=self.base_url, connector=connector,
                                      timeout=aiohttp.ClientTimeout(total=30)))
        return self._clients[address]


@asynccontextmanager
async def https(app: web.Application, pki: Pki) -> AsyncIterator[Https]:
    """Serve ``app`` on 127.0.0.1 over TLS as the API process does (healthiot.services)."""
    port = free_port()
    runner = await serve_api(app, host="127.0.0.1", port=port,
                             tls=server_tls(pki.server_cert, pki.server_key))
    try:
        async with AsyncExitStack() as stack:
            yield Https(port, str(pki.ca.ca_file), stack)
    finally:
        await runner.cleanup()
