"""The simulate command offers exactly the scenarios the simulator knows."""

import pytest

from healthiot.cli import _parser
from healthiot.simulate import SCENARIOS


def test_the_command_line_offers_every_scenario_and_no_other():
    parser = _parser()
    for name in SCENARIOS:
        assert parser.parse_args(["simulate", "--scenario", name]).scenario == name
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--scenario", "no-such-scenario"])
    sub = next(a for a in parser._actions if a.dest == "command").choices["simulate"]
    offered = next(a for a in sub._actions if a.dest == "scenario").choices
    assert sorted(offered) == sorted(SCENARIOS)
