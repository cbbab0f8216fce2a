"""The README stays true: its CLI table is the COMMANDS table, its config reference is generated from code."""

import re
from pathlib import Path

from tuneloop.cli import COMMANDS
from tuneloop.config import reference_markdown

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_cli_table_lists_exactly_the_commands():
    documented = re.findall(r"^\| `tuneloop ([a-z-]+)", README, flags=re.M)
    assert sorted(set(documented)) == sorted(COMMANDS)


def test_config_reference_is_current():
    assert reference_markdown() in README, "run: python scripts/update_readme.py"


def test_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README
