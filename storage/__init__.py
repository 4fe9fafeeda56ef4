"""Encrypted time-series storage on PostgreSQL (TimescaleDB when present), through asyncpg."""
