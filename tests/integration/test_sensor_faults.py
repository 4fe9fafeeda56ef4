"""A watch with faulty sensors, through a real broker, bridge and database: heart-rate
spikes and SpO2 dips are stored flagged (a spike of 0 is rejected as impossible and kept in
quarantine), flagged samples stay out of summaries, dropouts are gaps with no invented
sample, and nothing else is lost. The watch's ledger is the ground truth."""

import datetime as dt
import random
import time

import numpy as np

from tests.conftest import new_patient, new_watch, wait_until
from vitals.normalise import Flag, reliable
from vitals.summaries import summarise

PERIODS = 30  # 10 s messages: five minutes of readings


def _utc(seconds):
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


async def test_spikes_and_dips_are_flagged_and_dropouts_are_gaps_and_nothing_is_lost(
        core, pki, broker, bridge, tmp_path):
    patient, _, _ = await new_patient(core, "artefacts")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    watch.rng = random.Random(4)  # the faults' draws: both kinds of spike occur
    faults = watch.faults
    faults.hr_spike_every_s, faults.spo2_dip_every_s = 15.0, 45.0
    faults.dropout_every_s, faults.dropout_s = 40.0, 8.0
    # Half-second boundaries: each 10 s message measures ten whole seconds (a watch's SpO2
    # is read at whole minutes, which a boundary would skip). Aligned on a minute, so that
    # the seeded faults draw the same artefacts on every run.
    end = int(time.time()) // 60 * 60 - 0.5
    start = end - 10 * PERIODS
    for i in range(PERIODS):
        watch.measure(start + 10 * i, start + 10 * i + 10)
    await watch.flush(timeout=20)
    assert watch.pending == 0
    ledger = watch.ledger

    async def all_in():
        return await core.pool.fetchval(
            "SELECT count(*) FROM ingested_messages WHERE device_id = $1",
            watch.device_id) == ledger.messages
    await wait_until(all_in)

    zeros = [t for t, v in ledger.spikes if v == 0.0]
    high = [(t, v) for t, v in ledger.spikes if v > 0.0]
    assert zeros and high and ledger.dips and ledger.not_taken  # every kind happened

    # Nothing lost: every sample sent is stored or rejected, and the rejected are the zeros.
    stored, rejected = await core.pool.fetchrow(
        "SELECT sum(samples), sum(rejected) FROM ingested_messages WHERE device_id = $1",
        watch.device_id)
    assert stored + rejected == ledger.samples
    assert rejected == len(zeros)
    details = await core.pool.fetch(
        "SELECT reason, detail FROM quarantine WHERE device_id = $1", watch.device_id)
    assert details and all(r["reason"] == "rejected_samples" for r in details)
    assert all("impossible_value" in r["detail"] for r in details)

    span = (_utc(start - 1), _utc(end + 1))
    heart = await core.store.read_series(patient, "heart_rate", *span)
    at = {int(t): i for i, t in enumerate(heart.t_ms.tolist())}
    # A spike: stored as sent, flagged implausible, and a spike where it has neighbours.
    for t, value in high:
        i = at[round(t * 1000)]
        assert heart.value[i] == value and heart.flags[i] & Flag.IMPLAUSIBLE
        if round(t * 1000) - 1000 in at and round(t * 1000) + 1000 in at:
            assert heart.flags[i] & Flag.HR_SPIKE
    # A zero is not stored (it is in quarantine), nor is any other zero.
    assert all(round(t * 1000) not in at for t in zeros)
    assert not np.any(heart.value == 0.0)
    # Flagged samples are exactly the spikes: the rest of the stream is clean.
    assert np.count_nonzero(~reliable(heart.flags)) == len(high)

    spo2 = await core.store.read_series(patient, "spo2", *span)
    by_time = dict(zip(spo2.t_ms.tolist(), zip(spo2.value.tolist(), spo2.flags.tolist(),
                                               strict=True), strict=True))
    for t, value in ledger.dips:
        assert by_time[round(t * 1000)] == (value, Flag.IMPLAUSIBLE)

    # Dropouts are gaps: no sample of any metric where the sensor took none.
    for metric in {m for m, _ in ledger.not_taken}:
        series = await core.store.read_series(patient, metric, *span)
        times = set(series.t_ms.tolist())
        assert not times & {round(t * 1000) for m, t in ledger.not_taken if m == metric}
    missed_beats = sum(1 for m, _ in ledger.not_taken if m == "heart_rate")
    assert len(heart) == 10 * PERIODS - missed_beats - len(zeros)

    # Summaries leave the flagged samples out: no spike moves the maximum or the mean.
    lo, hi = int(start * 1000), int((end + 1) * 1000)
    summary = summarise("heart_rate", heart.t_ms, heart.value, heart.flags, lo, hi)
    assert summary.flagged == len(high)
    assert summary.maximum is not None and summary.maximum < 220
    assert summary.count == len(heart) - len(high)
    low_spo2 = summarise("spo2", spo2.t_ms, spo2.value, spo2.flags, lo, hi)
    assert low_spo2.minimum is not None and low_spo2.minimum >= 80
    assert low_spo2.flagged == len(ledger.dips)
    watch.close()
