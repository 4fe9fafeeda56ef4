"""The README's command list names every subcommand the parser has."""

import argparse
import re
from pathlib import Path

from healthiot.cli import _parser

README = Path(__file__).resolve().parents[2] / "README.md"


def _leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[str]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                below = _leaves(sub, (*prefix, name))
                found += below or [" ".join((*prefix, name))]
    return found


def test_the_readme_names_every_subcommand():
    text = README.read_text()
    section = text[text.index("## Commands"):text.index("## The API")]
    named = {re.sub(r"\s+", " ", m) for m in re.findall(r"`([^`]+)`", section)}
    missing = [c for c in _leaves(_parser())
               if not any(n == c or n.startswith(c + " ") for n in named)]
    assert not missing
