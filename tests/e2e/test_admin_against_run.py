"""Administration commands against a running `healthiot run`, with only the settings that
started it (its var directory and ports): no database URL, KEK or owner-key directory set
by hand (issue 22)."""

import signal
import subprocess

from tests.e2e.test_run_command import _healthiot, _no_server_left, run_env  # noqa: F401


def _valid_rpps(prefix: str = "1000000000") -> str:
    from vitals.rpps import luhn_ok
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


def test_clinicians_add_and_quarantine_list_work_against_the_running_stack(run_env):  # noqa: F811
    var, env = run_env
    process = subprocess.Popen(_healthiot("run"), env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.startswith("devices online"):
                break
        added = subprocess.run(_healthiot("clinicians", "add", "--rpps", _valid_rpps(),
                                          "--profession", "physician", "--name", "Dr A",
                                          "--username", "dr-a"),
                               env=env, capture_output=True, text=True, timeout=60)
        listed = subprocess.run(_healthiot("quarantine", "list", "--hours", "1"), env=env,
                                capture_output=True, text=True, timeout=60)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=90)
    assert added.returncode == 0, added.stderr
    assert "TOTP secret" in added.stdout
    assert listed.returncode == 0 and listed.stdout.startswith("id\t"), listed.stderr
    _no_server_left(var)
