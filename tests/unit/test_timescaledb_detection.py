"""The embedded stack preloads TimescaleDB only when its installation has all of it: a
half-installed extension starts a plain server (native partitions), never a crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from healthiot import timescaledb

VERSION = "2.28.3"


def _install(root: Path, *, loader: bool = True, control: bool = True,
             versioned: bool = True) -> tuple[Path, Path]:
    lib, share = root / "lib", root / "share"
    (share / "extension").mkdir(parents=True)
    lib.mkdir()
    if loader:
        (lib / "timescaledb.so").write_bytes(b"")
    if versioned:
        (lib / f"timescaledb-{VERSION}.so").write_bytes(b"")
    if control:
        (share / "extension" / "timescaledb.control").write_text(
            f"comment = 'x'\ndefault_version = '{VERSION}'\nmodule_pathname = '$libdir/x'\n")
    return lib, share


def test_a_whole_installation_gives_its_version(tmp_path: Path) -> None:
    assert timescaledb.installed_version(*_install(tmp_path)) == VERSION


@pytest.mark.parametrize("missing", ["loader", "control", "versioned"])
def test_any_part_missing_means_not_installed(tmp_path: Path, missing: str) -> None:
    assert timescaledb.installed_version(*_install(tmp_path, **{missing: False})) is None


def _postgres_with_pg_config(root: Path, lib: Path, share: Path) -> str:
    bin_dir = root / "bin"
    bin_dir.mkdir()
    pg_config = bin_dir / "pg_config"
    pg_config.write_text(f"#!/bin/sh\necho {lib}\necho {share}\n")
    os.chmod(pg_config, 0o700)
    (bin_dir / "postgres").write_bytes(b"")
    return str(bin_dir / "postgres")


def test_the_server_preloads_it_when_its_installation_has_all_of_it(tmp_path: Path) -> None:
    postgres = _postgres_with_pg_config(tmp_path, *_install(tmp_path / "pg"))
    options = timescaledb.server_options(postgres)
    assert "shared_preload_libraries=timescaledb" in options
    assert "timescaledb.telemetry_level=off" in options


def test_a_half_installed_extension_is_not_preloaded(tmp_path: Path) -> None:
    postgres = _postgres_with_pg_config(tmp_path, *_install(tmp_path / "pg", versioned=False))
    assert timescaledb.server_options(postgres) == []


def test_without_pg_config_nothing_is_preloaded(tmp_path: Path) -> None:
    (tmp_path / "postgres").write_bytes(b"")
    assert timescaledb.server_options(str(tmp_path / "postgres")) == []
