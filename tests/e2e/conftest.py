"""Fixtures of the end-to-end tests that run the command line as a user does."""

import os
import time
from pathlib import Path

import pytest

from healthiot.localservers import free_port, stable_port

ROOT = Path(__file__).resolve().parents[2]  # this checkout, imported first by the child


@pytest.fixture
def sim_env(workdir):
    """A var/ of its own and free ports for one `healthiot simulate` subprocess:
    (var directory, environment)."""
    var = workdir / f"var-sim-{time.monotonic_ns()}"
    env = dict(os.environ, HEALTHIOT_VAR_DIR=str(var), HEALTHIOT_PG_PORT=str(free_port()),
               HEALTHIOT_MQTT_PORT=str(stable_port()), HEALTHIOT_API_PORT=str(free_port()),
               HEALTHIOT_MQTT_SERVICES_PORT=str(stable_port()),
               HEALTHIOT_BRIDGE_HEALTH_PORT=str(free_port()),
               HEALTHIOT_API_METRICS_PORT=str(free_port()),
               HEALTHIOT_MAINTENANCE_METRICS_PORT=str(free_port()),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    return var, env
