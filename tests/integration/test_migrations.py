import asyncpg

from storage.migrate import migrate, migrations


async def test_migrating_twice_applies_nothing_the_second_time(database):
    conn = await asyncpg.connect(database.dsn, password=database.password)
    try:
        assert await migrate(conn) == []  # the template was migrated already
        recorded = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert recorded == len(migrations())
    finally:
        await conn.close()
