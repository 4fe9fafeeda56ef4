"""The fleet measurement (issue 3): can one machine hold N concurrent mTLS device sessions
(10,000 by default), what does a session cost in memory (the simulator's and Mosquitto's RSS
over their baseline, per session), and after Mosquitto is killed and restarted, how long
until every device is back, with nothing lost?

It runs ``healthiot simulate`` in this process with the broker-restart scenario (the broker
is SIGKILLed halfway) where every device uploads once a minute, as real ones do: sessions,
not the message rate, are measured here (bench_ingest.py measures the rate). It runs on a
stack of its own: its own var/ directory (default var/bench-fleet: the enrolled fleet is
kept there, so a second run skips the key, CSR and signing of every device) and free
ports. The last lines are the memory figures and ``simulate: ... lost=<n> dup=<n>``;
"devices back online: N/M in S s" is the restart's figure.

Too heavy for CI and for `make bench` (enrolment plus a five-minute run); run it alone:

    python bench/bench_fleet.py --devices 10000 --duration 300
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from healthiot.localservers import stable_port  # noqa: E402
from healthiot.settings import load  # noqa: E402
from healthiot.simulate import SCENARIOS, simulate  # noqa: E402

FLEET = dataclasses.replace(
    SCENARIOS["broker-restart"], watch_interval_s=60.0, spot_interval_s=60.0,
    description="every device uploads once a minute; Mosquitto is killed (SIGKILL) halfway "
                "and restarted, the fleet reconnects")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--var", type=Path, default=ROOT / "var" / "bench-fleet")
    args = parser.parse_args()
    os.environ.update(HEALTHIOT_VAR_DIR=str(args.var.resolve()),
                      HEALTHIOT_PG_PORT=str(stable_port()),
                      HEALTHIOT_MQTT_PORT=str(stable_port()),
                      HEALTHIOT_MQTT_SERVICES_PORT=str(stable_port()),
                      HEALTHIOT_API_PORT=str(stable_port()))
    return asyncio.run(simulate(load(), devices=args.devices, duration=args.duration,
                                scenario=FLEET))


if __name__ == "__main__":
    sys.exit(main())
