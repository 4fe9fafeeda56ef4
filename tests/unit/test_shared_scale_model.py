"""The simulated shared scale: each weighing is one of its people, recorded in the ledger,
with weights near that person's; a one-person scale behaves as before."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from firmware_sim.device import Broker, Flash
from firmware_sim.models import Scale
from firmware_sim.signals import Weight

NOON = 1_767_355_200.0


def _scale(tmp_path: Path, seed: int = 7, **kwargs: object) -> Scale:
    return Scale("scale-0000aaaa", Flash(tmp_path / "scale"),
                 Broker("localhost", 1, tmp_path / "ca.pem"), interval_s=60.0,
                 rng=random.Random(seed), **kwargs)  # type: ignore[arg-type]


def test_each_weighing_is_one_of_the_people_and_the_ledger_says_who(tmp_path: Path) -> None:
    scale = _scale(tmp_path, people=[58.0, 84.0, 23.0])
    for i in range(60):
        records = scale.readings(NOON + 60 * i, NOON + 60 * (i + 1))
        [(metric, unit, t, kg), (fat_metric, _, fat_t, _)] = records
        assert (metric, unit, fat_metric, fat_t) == ("body_weight", "kg", "body_fat", t)
        weighed_t, who, truth = scale.ledger.weighed[-1]
        assert weighed_t == t and truth == kg
        assert abs(kg - [58.0, 84.0, 23.0][who]) < 2.0
    assert {who for _, who, _ in scale.ledger.weighed} == {0, 1, 2}
    assert len(scale.ledger.weighed) == 60


def test_each_person_keeps_a_body_fat_of_their_own(tmp_path: Path) -> None:
    scale = _scale(tmp_path, people=[58.0, 84.0])
    fats: dict[int, list[float]] = {0: [], 1: []}
    for i in range(80):
        fat = scale.readings(NOON + i, NOON + i + 1)[1][3]
        fats[scale.ledger.weighed[-1][1]].append(fat)
    for who, values in fats.items():
        assert values and max(values) - min(values) < 5.0, who


def test_a_one_person_scale_weighs_as_before(tmp_path: Path) -> None:
    scale = _scale(tmp_path, seed=3, kg=80.0)
    expected = Weight(80.0, rng=random.Random(3))
    for i in range(5):
        kg, fat = expected.measure()
        records = scale.readings(NOON + i, NOON + i + 1)
        assert (records[0][3], records[1][3]) == (kg, fat)
    assert scale.ledger.weighed == []  # every weighing is its owner's: none recorded


@pytest.mark.parametrize("people", [[], [0.5], [72.0, 400.0]])
def test_implausible_people_are_refused(tmp_path: Path, people: list[float]) -> None:
    with pytest.raises(ValueError):
        _scale(tmp_path, people=people)
