"""The metrics `healthiot run` (`make run`) serves, scraped as Prometheus would: the API's
(requests by route template and status, latency) and maintenance's (passes, retention runs),
each on its own port next to the bridge's."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.request

from tests.e2e.test_run_command import _healthiot, _no_server_left, run_env  # noqa: F401

DEVICE_IN_PATH = "watch-0123456789ab"


def _scrape(port: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(answer.read().decode())


def _value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _curl_api(var, port: str, path: str) -> str:  # type: ignore[no-untyped-def]
    done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                           str(var / "pki" / "ca.pem"), f"https://localhost:{port}{path}"],
                          capture_output=True, text=True, timeout=30, check=False)
    return done.stdout


def test_run_serves_api_and_maintenance_metrics(run_env):  # noqa: F811
    var, env = run_env
    process = subprocess.Popen(_healthiot("run"), env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = []
    try:
        deadline = time.monotonic() + 120
        for line in process.stdout:
            output.append(line)
            if line.startswith("devices online") or time.monotonic() > deadline:
                break
        api = env["HEALTHIOT_API_PORT"]
        assert _curl_api(var, api, "/v1/me") == "401"
        assert _curl_api(var, api, f"/v1/me/devices/{DEVICE_IN_PATH}/users") == "401"
        api_metrics = _scrape(env["HEALTHIOT_API_METRICS_PORT"])

        # Maintenance runs a pass at start; its retention step ends the pass.
        maintenance = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            maintenance = _scrape(env["HEALTHIOT_MAINTENANCE_METRICS_PORT"])
            if _value(maintenance, "healthiot_maintenance_retention_runs_total") >= 1:
                break
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=90)
    text = "".join(output) + rest
    assert process.returncode == 0, text
    _no_server_left(var)

    assert _value(api_metrics, 'healthiot_api_requests_total{method="GET",route="/v1/me",'
                               'status="401"}') == 1.0, api_metrics
    assert _value(api_metrics, 'healthiot_api_requests_total{method="GET",'
                               'route="/v1/me/devices/{device_id}/users",status="401"}') == 1.0
    assert _value(api_metrics, 'healthiot_api_request_duration_seconds_count{method="GET",'
                               'route="/v1/me"}') == 1.0
    assert DEVICE_IN_PATH not in api_metrics  # templates, never the ids clients sent

    assert _value(maintenance, "healthiot_maintenance_passes_total") >= 1, maintenance
    assert _value(maintenance, "healthiot_maintenance_retention_runs_total") >= 1, maintenance
    assert "healthiot_maintenance_segments_set_aside_total 0.0" in maintenance
