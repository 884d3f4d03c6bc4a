"""The retry policy and loop, and error classification: pure, no network."""

from __future__ import annotations

import asyncio
import random

import pytest

from lab.config import Tuning
from lab.ops.classify import classify
from lab.ops.retry import Attempt, Backoff, RetriesExhausted, retry

FAST = Backoff(sleep=0, max_sleep=0, attempts=3, max_total=60, jitter=0)


def test_backoff_doubles_and_caps_without_jitter() -> None:
    b = Backoff(sleep=20, max_sleep=120, attempts=8, max_total=2400, jitter=0)
    assert [b.delay(k) for k in range(1, 7)] == [20, 40, 80, 120, 120, 120]


def test_backoff_jitter_stays_within_bounds() -> None:
    b = Backoff(sleep=10, max_sleep=60, attempts=8, max_total=2400, jitter=0.2)
    rng = random.Random(7)
    for k in range(1, 8):
        base = min(10 * 2 ** (k - 1), 60)
        for _ in range(50):
            d = b.delay(k, rng)
            assert base * 0.8 <= d <= min(base * 1.2, 60)


def test_backoff_stops_at_attempts_or_total_budget() -> None:
    b = Backoff(sleep=20, max_sleep=120, attempts=3, max_total=100, jitter=0)
    assert b.next_delay(1, elapsed=0) == 20
    assert b.next_delay(2, elapsed=10) == 40
    assert b.next_delay(3, elapsed=10) is None  # attempts spent
    assert b.next_delay(2, elapsed=70) is None  # 70 + 40 would pass the 100 s budget


def run_retry(outcomes: list[Exception | None]) -> tuple[list[str], Attempt | Exception]:
    """Attempts fail or succeed in the order given; returns what happened, and the result."""
    log: list[str] = []

    async def attempt(a: Attempt) -> None:
        log.append(f"try {a.number}/{a.of}")
        if (error := outcomes[a.number - 1]) is not None:
            raise error

    async def undo(a: Attempt, e: Exception) -> None:
        log.append(f"undo {a.number}: {e}")

    async def go() -> Attempt:
        return await retry(attempt, FAST, retry_on=(OSError,), undo=undo, say=log.append)

    loop = asyncio.new_event_loop()  # not asyncio.run: it would unset the thread's loop
    try:
        return log, loop.run_until_complete(go())
    except Exception as e:
        return log, e
    finally:
        loop.close()


def test_retry_undoes_each_failure_and_returns_the_attempt_that_held() -> None:
    log, done = run_retry([OSError("a"), None])
    assert log == ["try 1/3", "undo 1: a", "backing off 0.0s", "try 2/3"]
    assert isinstance(done, Attempt) and done.number == 2


def test_retry_stops_when_the_attempts_are_spent() -> None:
    log, error = run_retry([OSError("a"), OSError("b"), OSError("c")])
    assert isinstance(error, RetriesExhausted) and error.attempts == 3
    assert str(error.last) == "c" and log[-1] == "undo 3: c"


def test_retry_lets_other_errors_through_without_undo() -> None:
    log, error = run_retry([ValueError("bad input")])
    assert isinstance(error, ValueError) and log == ["try 1/3"]


def test_backoff_from_the_default_tuning() -> None:
    b = Backoff.from_tuning(Tuning())
    assert (b.sleep, b.max_sleep, b.attempts, b.max_total) == (20, 120, 8, 2400)


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        (
            "error execution phase control-plane-join/etcd: rpc error: code = FailedPrecondition"
            " desc = etcdserver: can only promote a learner member which is in sync with leader",
            "learner-not-in-sync",
        ),
        # real kubeadm 1.34 under emulation (DESIGN.md): its promote retried on a member etcd
        # had already promoted; the answer for a voter is the short form of the seed's error
        (
            "error execution phase etcd-join: error creating local etcd static pod manifest file:"
            " etcdserver: can only promote a learner member",
            "already-voter",
        ),
        (
            "error execution phase control-plane-prepare/download-certs: error downloading certs:"
            ' error downloading the secret: Get "https://10.30.0.10:8443/api/v1/namespaces/'
            'kube-system/secrets/kubeadm-certs?timeout=10s": context deadline exceeded',
            "api-timeout",
        ),
        (
            'Get "https://10.30.0.10:8443/api/v1/nodes": net/http: TLS handshake timeout',
            "api-timeout",
        ),
        ("etcdserver: too many learner members in cluster", "too-many-learners"),
        ("member remove: UNAVAILABLE: etcdserver: unhealthy cluster", "unhealthy-cluster"),
        ("preflight: path blocked: cp2 -> cp1:2380 (timeout)", "path-blocked"),
        (
            "[preflight] Some fatal errors occurred:\n\t[ERROR FileAvailable--etc-kubernetes-"
            "kubelet.conf]: /etc/kubernetes/kubelet.conf already exists",
            "node-dirty",
        ),
        ("gate failed: leader: cp1: sees no leader", "no-leader"),
        ("gate failed: applied: cp2: applied index 10 is 90 behind", "etcd-unstable"),
        (
            'Get "https://10.30.0.11:6443/...": dial tcp 10.30.0.11:6443: connect: connection'
            " refused",
            "connection-refused",
        ),
        ("context deadline exceeded", "timeout"),
        ("cp2 (root@10.30.0.12:22): unreachable: no SSH answer within 5s", "ssh"),
        ("error: couldn't validate the identity of the API Server", "credentials"),
    ],
)
def test_classify_names_the_cause(text: str, cause: str) -> None:
    assert classify(text)[0] == cause


def test_classify_unknown_keeps_the_first_line() -> None:
    assert classify("\n  something odd happened  \nmore") == ("unknown", "something odd happened")
