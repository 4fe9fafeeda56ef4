"""compose.yaml deploys the database engine the tests run: the same PostgreSQL major, and on
the TimescaleDB pass the very TimescaleDB version the suite ran against."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import yaml

from tests.conftest import Database

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"
IMAGE = re.compile(r"timescale/timescaledb:(\d+\.\d+\.\d+)-pg(\d+)")


async def test_compose_pins_the_timescaledb_and_postgresql_the_tests_run(
        database: Database, db_engine: str) -> None:
    image = yaml.safe_load(COMPOSE.read_text())["services"]["db"]["image"]
    match = IMAGE.fullmatch(image)
    assert match, f"compose's database image {image!r} is not a pinned TimescaleDB"
    conn = await asyncpg.connect(database.dsn, password=database.password)
    try:
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        version = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    finally:
        await conn.close()
    assert int(match.group(2)) == major
    if db_engine == "timescaledb":
        assert version == match.group(1)
    else:
        assert version is None
