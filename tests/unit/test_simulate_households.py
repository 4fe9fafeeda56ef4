"""The households of the shared-scale scenario are what the demo claims: people the
attribution rule tells apart, and in a household of three a pair it must not guess."""

import datetime as dt
import random
import uuid

import pytest

from broker_bridge.attribution import LastWeight, Reason, attribute
from healthiot.simulate_households import (
    CLOSE_APART_KG,
    HEAVIEST_KG,
    LIGHTEST_KG,
    MIN_APART_KG,
    household_weights,
)

NOW = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("three", [False, True])
def test_household_weights_are_told_apart_except_the_close_pair(three):
    for seed in range(200):
        rng = random.Random(seed)
        owner = rng.uniform(50, 110)
        people = household_weights(rng, owner, three=three)
        assert len(people) == (3 if three else 2) and people[0] == owner
        distinct = [people[0], *people[2:]] if three else people
        assert all(LIGHTEST_KG <= kg <= HEAVIEST_KG for kg in people[1:])
        assert all(abs(a - b) >= MIN_APART_KG for i, a in enumerate(distinct)
                   for b in distinct[i + 1:])
        if three:
            assert abs(people[1] - owner) == pytest.approx(CLOSE_APART_KG, abs=0.06)
        ids = [uuid.uuid4() for _ in people]
        last = {p: LastWeight(round(kg, 1), NOW - dt.timedelta(days=1))
                for p, kg in zip(ids, people, strict=True)}
        # A weighing 0.4 kg off (the scale's noise is 0.3 kg) of each person.
        for who, kg in enumerate(people):
            for off in (-0.4, 0.4):
                result = attribute(kg + off, NOW, last)
                if three and who < 2:
                    assert result.reason == Reason.AMBIGUOUS
                else:
                    assert (result.patient_id, result.reason) == (ids[who], Reason.ATTRIBUTED)
