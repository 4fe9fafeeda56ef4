"""Whether a PostgreSQL installation carries TimescaleDB whole, and the server options that
load it.

TimescaleDB must be preloaded (``shared_preload_libraries``) before ``CREATE EXTENSION``
works, but preloading a library that is not there stops the server from starting. So the
embedded stack and the test suite preload it only when all three parts are in the very
installation whose ``postgres`` they start: the loader (``timescaledb.so``), the control file,
and the versioned library the control file names. Anything less (a half-installed extension)
starts a plain server, and storage/partitioning.py then uses native partitions.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

LOADER = "timescaledb.so"
PG_CONFIG_TIMEOUT_S = 10.0
# Telemetry off: a test or demo server has no business calling home.
PRELOAD_OPTIONS = ["-c", "shared_preload_libraries=timescaledb",
                   "-c", "timescaledb.telemetry_level=off"]
_DEFAULT_VERSION = re.compile(r"^\s*default_version\s*=\s*'([^']+)'", re.M)


def installed_version(pkglibdir: Path, sharedir: Path) -> str | None:
    """The TimescaleDB version installed whole in these directories, or None when any part
    (loader, control file, the versioned library it names) is missing."""
    control = sharedir / "extension" / "timescaledb.control"
    if not (pkglibdir / LOADER).is_file() or not control.is_file():
        return None
    match = _DEFAULT_VERSION.search(control.read_text(errors="replace"))
    if match is None or not (pkglibdir / f"timescaledb-{match.group(1)}.so").is_file():
        return None
    return match.group(1)


def installation_dirs(postgres: str) -> tuple[Path, Path] | None:
    """(pkglibdir, sharedir) of the installation of the ``postgres`` binary, from the
    ``pg_config`` beside it; None when there is none to ask."""
    pg_config = Path(postgres).parent / "pg_config"
    if not pg_config.is_file():
        return None
    try:
        out = subprocess.run([str(pg_config), "--pkglibdir", "--sharedir"], capture_output=True,
                             text=True, check=True, timeout=PG_CONFIG_TIMEOUT_S).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return (Path(out[0]), Path(out[1])) if len(out) == 2 else None


def server_options(postgres: str) -> list[str]:
    """Options for the ``postgres`` binary at that path that preload TimescaleDB when its
    installation has all of it; none otherwise."""
    dirs = installation_dirs(postgres)
    return list(PRELOAD_OPTIONS) if dirs and installed_version(*dirs) else []
