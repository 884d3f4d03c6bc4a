"""The membership lock: a second `lab join`/`leave` waits for the first, and says for whom."""

from __future__ import annotations

import fcntl
import io
import threading
import time
from pathlib import Path

from lab.ops.common import Progress, membership_lock


def test_a_second_membership_change_waits_for_the_first(tmp_path: Path) -> None:
    out = io.StringIO()
    entered = threading.Event()

    def second() -> None:
        with membership_lock(tmp_path, "join cp3", Progress(out)):
            entered.set()

    with membership_lock(tmp_path, "join cp2", Progress(io.StringIO())):
        holder = (tmp_path / "membership.lock").read_text()
        assert holder.startswith("`lab join cp2` (pid ")
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(1.5)
        assert not entered.is_set()
        assert f"waiting for {holder} to finish" in out.getvalue()
    waiter.join(timeout=5)
    assert entered.is_set()
    with open(tmp_path / "membership.lock") as f:  # released: free for the next
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
