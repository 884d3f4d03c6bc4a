"""The join's retry policy: exponential backoff with jitter inside an attempt and a time budget."""

from __future__ import annotations

import random
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
    def from_tuning(cls, t: Tuning) -> Backoff:
        return cls(
            t.cp_join_retry_sleep_seconds,
            t.cp_join_retry_max_sleep_seconds,
            t.cp_join_retry_attempts,
            t.cp_join_retry_max_total_seconds,
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
