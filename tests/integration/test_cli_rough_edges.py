"""The command line's rough edges a device maker met (issue 22): each is a clear one-line
error with exit code 2, never a traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Database, Pki
from tests.integration.test_device_cli import ROOT, healthiot


async def test_revoking_an_unknown_device_says_it_does_not_exist(database: Database, pki: Pki,
                                                                 tmp_path: Path) -> None:
    done = await healthiot(database, tmp_path / "var", "devices", "revoke",
                           "watch-000000000000", "--pki", str(pki.directory),
                           "--crl-file", str(tmp_path / "crl.pem"))
    assert done.returncode == 2, done.stderr
    assert "no device watch-000000000000" in done.stderr and "Traceback" not in done.stderr


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHIOT_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "healthiot.cli", *args], cwd=ROOT,
                          env=environ, capture_output=True, text=True, timeout=60, check=False)


async def test_a_bad_log_level_is_a_clear_error(tmp_path: Path) -> None:
    done = await asyncio.to_thread(_cli, "quarantine", "list", HEALTHIOT_LOG_LEVEL="LOUD",
                                   HEALTHIOT_VAR_DIR=str(tmp_path))
    assert done.returncode == 2
    assert "HEALTHIOT_LOG_LEVEL" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [("run", "--duration", "-1"), ("run", "--duration", "0"),
                                  ("simulate", "--devices", "0"),
                                  ("simulate", "--duration", "-5"),
                                  ("simulate", "--duration", "nan")],
                         ids=lambda a: " ".join(a))
async def test_negative_durations_and_zero_devices_are_refused(args: tuple[str, ...],
                                                               tmp_path: Path) -> None:
    done = await asyncio.to_thread(_cli, *args, HEALTHIOT_VAR_DIR=str(tmp_path / "var"))
    assert done.returncode == 2 and "must be" in done.stderr, done.stderr
    assert not (tmp_path / "var").exists()  # refused before anything started
