#!/usr/bin/env bash
# Make sure the PostgreSQL and Mosquitto binaries, what builds the broker's plugin (gcc,
# Mosquitto's headers) and Python's venv support exist. As root,
# install Debian's packages; otherwise print the exact command to run and stop.
set -euo pipefail

have_pg() {
  [ -n "${HEALTHIOT_PG_BIN_DIR:-}" ] && [ -x "$HEALTHIOT_PG_BIN_DIR/initdb" ] && return 0
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }

# The broker's policy plugin is compiled against Mosquitto's own headers (devices/broker_plugin.py).
have_plugin_toolchain() { [ -f /usr/include/mosquitto_broker.h ] && [ -f /usr/include/mosquitto.h ] && command -v gcc >/dev/null 2>&1 && [ -f /usr/include/stdio.h ]; }

# Debian splits ensurepip (what "python3 -m venv" needs) into python3-venv.
have_venv() { [ -d .venv ] || "${PYTHON:-python3}" -c 'import ensurepip' >/dev/null 2>&1; }

missing=()
have_venv || missing+=(python3-venv)
have_pg || missing+=(postgresql)
have_mosquitto || missing+=(mosquitto)
have_plugin_toolchain || missing+=(gcc libc6-dev mosquitto-dev libmosquitto-dev)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The packages' own services are not used: the project starts its own servers.
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "missing: ${missing[*]}. Run as root, then retry:"
  echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}"
  exit 1
fi
