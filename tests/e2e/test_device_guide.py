"""docs/devices.md as a device maker follows it: its mosquitto_pub example, run as written
against a real broker (mTLS), bridge, database and patient API, stores a reading the patient
reads back; its reason table is asyncapi.yaml's."""

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

from tests import contract
from tests.conftest import new_patient, new_watch, wait_until
from tests.e2e.test_reading_end_to_end import _login, api  # noqa: F401 (a fixture)

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "devices.md"


def _tested_block() -> str:
    text = GUIDE.read_text()
    match = re.search(r"<!-- the test runs this block as written -->\n```sh\n(.*?)```", text,
                      re.S)
    assert match, "the guide's example block is gone"
    return match.group(1)


async def test_the_guides_mosquitto_pub_example_stores_a_reading_the_patient_reads(
        core, pki, broker, bridge, api, tmp_path):  # noqa: F811
    alice, password, secret = await new_patient(core, "alice")
    watch = await new_watch(core, pki, broker, tmp_path, alice)
    device_dir = tmp_path / "factory"
    device_dir.mkdir()
    shutil.copy(watch.flash.key_file, device_dir / "d.key")
    shutil.copy(watch.flash.cert_file, device_dir / "device.pem")
    shutil.copy(pki.ca.ca_file, device_dir / "ca.pem")
    env = dict(os.environ, DEVICE=watch.device_id, HOST=broker.host, PORT=str(broker.port))
    done = await asyncio.to_thread(subprocess.run, ["bash", "-euc", _tested_block()],
                                   cwd=device_dir, env=env, capture_output=True, text=True,
                                   timeout=30)
    assert done.returncode == 0, done.stderr

    async def stored():
        return (await core.store.count_stored([watch.device_id]))[0] == 1
    await wait_until(stored)
    token = await _login(api, "alice", password, secret)
    async with api.get("/v1/me/vitals/heart_rate",
                       headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200
        body = await r.json()
    assert [s["v"] for s in body["samples"]] == [72, 73]
    assert await core.pool.fetchval("SELECT count(*) FROM quarantine") == 0


def test_the_guides_reason_table_is_the_contracts():
    listed = re.findall(r"^\| `(\w+)` \|", GUIDE.read_text(), re.M)
    assert sorted(listed) == sorted(contract.document()["x-reasons"])


def test_the_readme_links_the_guide_and_the_contract():
    readme = (GUIDE.parents[1] / "README.md").read_text()
    assert "docs/devices.md" in readme and "asyncapi.yaml" in readme
