"""Retry: exponential backoff with jitter within a number of attempts and a time budget, and the
loop that runs an operation's attempts under it."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lab.config import Tuning


@dataclass(frozen=True)
class Backoff:
    sleep: float
    max_sleep: float
    attempts: int
    max_total: float
    jitter: float = 0.2

    @classmethod
    def from_tuning(cls, t: Tuning, budget_scale: float = 1) -> Backoff:
        return cls(
            t.cp_join_retry_sleep_seconds,
            t.cp_join_retry_max_sleep_seconds,
            t.cp_join_retry_attempts,
            t.cp_join_retry_max_total_seconds * budget_scale,
        )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Sleep after failed attempt `attempt` (1-based): min(sleep * 2^(k-1), max) +/- jitter."""
        base = min(self.sleep * 2 ** (attempt - 1), self.max_sleep)
        r = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(base * (1 + r), self.max_sleep))

    def next_delay(
        self, attempt: int, elapsed: float, rng: random.Random | None = None
    ) -> float | None:
        """The sleep before attempt `attempt + 1`; None when the attempts or the time are spent."""
        if attempt >= self.attempts:
            return None
        d = self.delay(attempt, rng)
        if elapsed + d >= self.max_total:
            return None
        return d


@dataclass(frozen=True)
class Attempt:
    """One try of a retried operation: its number and the deadline of the whole budget."""

    number: int
    of: int
    deadline: float  # time.monotonic() at which the total budget is spent

    def left(self, at_least: float = 30) -> float:
        """What remains of the budget for one step, never less than `at_least` seconds."""
        return max(self.deadline - time.monotonic(), at_least)


class RetriesExhausted(Exception):
    """Every attempt failed; `last` is the last attempt's error."""

    def __init__(self, attempts: int, last: Exception) -> None:
        super().__init__(f"{attempts} attempt(s) failed; the last: {last}")
        self.attempts, self.last = attempts, last


async def retry(
    attempt: Callable[[Attempt], Awaitable[None]],
    policy: Backoff,
    *,
    retry_on: tuple[type[Exception], ...],
    undo: Callable[[Attempt, Exception], Awaitable[None]],
    say: Callable[[str], None],
) -> Attempt:
    """Run attempt 1, 2, ... until one succeeds (and return it); after each failure `undo` it
    and back off. RetriesExhausted when the attempts or the time are spent; other errors pass."""
    t0 = time.monotonic()
    number = 0
    while True:
        number += 1
        current = Attempt(number, policy.attempts, t0 + policy.max_total)
        try:
            await attempt(current)
            return current
        except retry_on as e:
            await undo(current, e)
            last = e
        delay = policy.next_delay(number, time.monotonic() - t0)
        if delay is None:
            raise RetriesExhausted(number, last)
        say(f"backing off {delay:.1f}s")
        await asyncio.sleep(delay)
