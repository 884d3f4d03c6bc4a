"""The README names only `lab` subcommands and `make` targets that exist, and every subcommand.

Only code is read: `inline code` and the 4-space indented blocks, where a command is written as
the user types it (`lab join cp2`, `.venv/bin/lab kubectl ...`, `make image VERSION=...`). The
subcommands come from `lab.cli.parser()`, the targets from the Makefile's rules, so a command added
to either must be documented, and one renamed or removed must leave the README.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from lab import cli

REPO = Path(__file__).resolve().parents[2]

# `lab` as a command: at the start, after a space, a backtick or a path (`.venv/bin/lab`), followed
# by a word; not `lab:workers`, `lab/config.py`, `lab.render` or `lab --help`.
LAB_COMMAND = re.compile(r"(?:^|(?<=[\s/(`]))lab ([a-z][a-z0-9-]*)")
MAKE_COMMAND = re.compile(r"(?:^|(?<=[\s(`]))make ([a-z][a-z0-9_-]*)")
# A Makefile rule: `name [name...]:`, not a variable (`X := ...`) or a recipe line (a tab first).
MAKE_RULE = re.compile(r"^([A-Za-z0-9_.-]+(?:[ \t]+[A-Za-z0-9_.-]+)*)[ \t]*:(?![=:])", re.MULTILINE)


def readme_code() -> list[str]:
    """Each line of the README's indented code blocks, then each inline code span of its prose."""
    code: list[str] = []
    paragraphs: list[list[str]] = [[]]
    in_block = False
    previous_blank = True
    for line in (REPO / "README.md").read_text().splitlines():
        blank = not line.strip()
        if line.startswith("    ") and (in_block or previous_blank):
            in_block = True
            code.append(line.strip())
        elif blank:
            paragraphs.append([])
        else:
            in_block = False
            paragraphs[-1].append(line)
        previous_blank = blank
    # An inline code span may wrap onto the next line of its paragraph.
    for paragraph in paragraphs:
        code += re.findall(r"`([^`]+)`", " ".join(paragraph))
    return code


def lab_subcommands() -> set[str]:
    actions = [a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1, "lab has one level of subcommands"
    return set(actions[0].choices)


def make_targets() -> set[str]:
    rules = MAKE_RULE.findall((REPO / "Makefile").read_text())
    return {name for rule in rules for name in rule.split() if not name.startswith(".")}


def named(pattern: re.Pattern[str]) -> dict[str, str]:
    """{name: the code it was found in} for every command the README's code names."""
    return {m: snippet for snippet in readme_code() for m in pattern.findall(snippet)}


def test_the_code_is_found() -> None:
    """The parsers themselves: the README's first commands and the Makefile's own are seen."""
    assert {"up", "test"} <= set(named(MAKE_COMMAND))
    assert {"up", "test", "test-unit", "image"} <= make_targets()
    assert "VENV" not in make_targets() and "$(VENV)/.installed" not in make_targets()
    assert "join" in named(LAB_COMMAND)


def test_every_lab_subcommand_the_readme_names_exists() -> None:
    unknown = {f"lab {name}": code for name, code in named(LAB_COMMAND).items()}
    for name in lab_subcommands():
        unknown.pop(f"lab {name}", None)
    assert not unknown, f"README names lab subcommands that `lab` does not have: {unknown}"


def test_every_make_target_the_readme_names_exists() -> None:
    targets = make_targets()
    unknown = {f"make {n}": code for n, code in named(MAKE_COMMAND).items() if n not in targets}
    assert not unknown, f"README names make targets the Makefile does not have: {unknown}"


def test_the_readme_names_every_lab_subcommand() -> None:
    missing = sorted(lab_subcommands() - set(named(LAB_COMMAND)))
    assert not missing, f"lab subcommands the README never names (as `lab NAME`): {missing}"
