"""Building the broker's policy plugin (devices/broker_plugin/healthiot_acl.c).

Mosquitto 2.0 checks no subscription against its acl_file, so the topic policy lives in a
small plugin, compiled at set-up against Debian's ``mosquitto-dev`` headers (the C API of
the very broker that loads it). It is built once per source version into a cache
directory, and copied next to each broker's configuration.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from devices.errors import PluginBuildFailed

SOURCE = Path(__file__).with_name("broker_plugin") / "healthiot_acl.c"
HEADER = Path("/usr/include/mosquitto_broker.h")
INSTALL_HINT = "apt-get install gcc libc6-dev mosquitto-dev libmosquitto-dev"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "healthiot"


def build_plugin(cache_dir: Path | None = None) -> Path:
    """The compiled plugin for the current source, built if it is not in the cache yet.
    Raises PluginBuildFailed with the reason."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    directory = cache_dir or _cache_dir()
    target = directory / f"healthiot_acl-{digest}.so"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not HEADER.exists():
        raise PluginBuildFailed("building the broker plugin needs a C compiler and "
                                f"Mosquitto's headers: {INSTALL_HINT}")
    directory.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name, then renamed: two processes building at once each
    # install a whole file.
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
             "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise PluginBuildFailed(f"compiling {SOURCE.name} failed:\n{done.stderr.strip()}")
        os.chmod(tmp, 0o755)  # noqa: S103 (code, not a secret: the broker's user loads it)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
