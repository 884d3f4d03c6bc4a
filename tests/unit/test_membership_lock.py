"""The membership lock: an etcd membership change waits for any other, a worker's join or leave
waits only for one of the same worker or an etcd change, and a waiter says for whom it waits."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

from lab.ops.common import Progress, membership_lock


@contextlib.contextmanager
def held(tmp_path: Path, what: str, worker: str | None = None) -> Iterator[None]:
    with membership_lock(tmp_path, what, Progress(io.StringIO()), worker=worker):
        yield


@contextlib.contextmanager
def second(
    tmp_path: Path, what: str, worker: str | None = None
) -> Iterator[tuple[threading.Event, io.StringIO]]:
    """Take the lock in a thread; yield (entered, its progress output). Leaving lets the thread
    release the lock as soon as it has it: a thread still waiting gets it once the first goes."""
    out, entered, release = io.StringIO(), threading.Event(), threading.Event()

    def take() -> None:
        with membership_lock(tmp_path, what, Progress(out), worker=worker):
            entered.set()
            release.wait(10)

    threading.Thread(target=take, daemon=True).start()
    try:
        yield entered, out
    finally:
        release.set()


def blocked(entered: threading.Event) -> bool:
    return not entered.wait(1.5)


def test_a_second_etcd_change_waits_for_the_first_and_says_for_whom(tmp_path: Path) -> None:
    with held(tmp_path, "join cp2"):
        holder = (tmp_path / "membership.lock").read_text()
        assert holder.startswith("`lab join cp2` (pid ")
        with second(tmp_path, "join cp3") as (entered, out):
            assert blocked(entered)
            assert f"waiting for {holder} to finish" in out.getvalue()
    assert entered.wait(5)


def test_two_workers_join_at_once(tmp_path: Path) -> None:
    with (
        held(tmp_path, "join worker1", worker="worker1"),
        second(tmp_path, "join worker2", worker="worker2") as (entered, out),
    ):
        assert entered.wait(5) and out.getvalue() == ""


def test_a_second_change_of_one_worker_waits_for_the_first(tmp_path: Path) -> None:
    with (
        held(tmp_path, "join worker1", worker="worker1"),
        second(tmp_path, "leave worker1", worker="worker1") as (entered, out),
    ):
        assert blocked(entered)
        assert "waiting for `lab join worker1` (pid " in out.getvalue()
    assert entered.wait(5)  # the first gone, the second goes


def test_workers_and_etcd_changes_wait_for_each_other(tmp_path: Path) -> None:
    with (
        held(tmp_path, "join worker1", worker="worker1"),
        second(tmp_path, "cleanup-learners") as (entered, out),
    ):
        assert blocked(entered)
        assert "waiting for workers' joins or leaves to finish" in out.getvalue()
    with (
        held(tmp_path, "leave cp3"),
        second(tmp_path, "join worker2", worker="worker2") as (entered, out),
    ):
        assert blocked(entered)
        assert "waiting for `lab leave cp3` (pid " in out.getvalue()
