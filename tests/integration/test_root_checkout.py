"""`make run` as root from a checkout under /root (issue 22): PostgreSQL runs as `postgres`
and Mosquitto as `mosquitto`, neither of which may traverse a 0700 home. Their files then
live under a directory they reach, linked from var/, and /root keeps its mode."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import asyncpg
import pytest

from healthiot import stack
from healthiot.localservers import free_port, running_as_root, stable_port
from healthiot.settings import Settings

pytestmark = pytest.mark.skipif(
    not running_as_root(),
    reason="only root runs the servers as other users (postgres, mosquitto); as any other "
    "user they run as that user, who reaches its own checkout")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home like /root: 0700, with a checkout in it."""
    home = tmp_path / "root-home"
    (home / "healthiot").mkdir(parents=True)
    os.chmod(home, 0o700)
    return home


async def test_root_runs_the_embedded_servers_from_a_checkout_under_a_0700_home(home):
    var = home / "healthiot" / "var"
    settings = Settings(var_dir=var, pg_port=free_port(), mqtt_port=stable_port(),
                        mqtt_services_port=stable_port())
    materials = stack.prepare(settings)
    postgres = stack.postgres_server(settings, materials)
    broker = stack.mosquitto_server(settings, materials)
    homes = [p for p in (var / "pg", var / "mosquitto")]
    try:
        await postgres.start()
        try:
            conn = await asyncpg.connect(postgres.dsn, password=materials.db_password,
                                         timeout=10)
            assert await conn.fetchval("SELECT 1") == 1
            await conn.close()
            await broker.start()
            broker.stop()
        finally:
            postgres.stop()

        assert stat.S_IMODE(home.stat().st_mode) == 0o700, "the home's mode was changed"
        for link in homes:
            assert link.is_symlink(), f"{link} is not linked to a reachable directory"
            assert home not in link.resolve().parents
        # One directory per checkout, holding both servers' (make clean removes it).
        assert len({link.resolve().parent for link in homes}) == 1
        # What the servers wrote is reachable through var/, as the CLI expects it.
        assert (var / "pg" / "data" / "PG_VERSION").exists()
        assert (var / "mosquitto" / "mosquitto.conf").exists()

        # A second run finds the same cluster.
        again = stack.postgres_server(settings, materials)
        assert again.data_dir == postgres.data_dir
    finally:
        for link in homes:
            if link.is_symlink():
                shutil.rmtree(link.resolve().parent, ignore_errors=True)
