"""Shares of one GPU among the slots of the workers on a node.

A job states how much of a GPU it needs (``resources.gpu_fraction``, 1 by default: the
whole device). A slot starts a job on a GPU only while the shares of the jobs running
there, plus the new one, stay within 1; otherwise it waits (heartbeating its job) until
enough is free. So K slots run K small jobs side by side, and a job that needs the
whole device runs alone. CPU slots share the cores instead (``torch_threads``).

The ledger is a small JSON file per device in the node's temporary directory (never on
a shared file system: the shares are this node's), read and written under an exclusive
``flock``; entries of processes that are gone are dropped, so a killed slot never keeps
its share.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

EPSILON = 1e-9  # shares are sums of user floats: 0.1 * 10 must fit in 1


class DeviceShares:
    """The ledger of one device: ``{pid: share}`` of the jobs running on it."""

    def __init__(self, device: str, directory: Path | None = None) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device)
        root = directory or Path(tempfile.gettempdir())
        self.path = root / f"regbench-shares-{os.getuid()}-{safe}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, float]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            try:
                held = {k: float(v) for k, v in json.loads(handle.read() or "{}").items()}
            except (ValueError, AttributeError):
                held = {}
            held = {pid: share for pid, share in held.items() if _alive(int(pid))}
            yield held
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(held))

    def in_use(self) -> float:
        with self._locked() as held:
            return sum(held.values())

    def try_acquire(self, share: float, pid: int | None = None) -> bool:
        """Take ``share`` of the device for process ``pid`` if it fits; True if taken."""
        key = str(pid or os.getpid())
        with self._locked() as held:
            others = sum(value for owner, value in held.items() if owner != key)
            if others + share > 1.0 + EPSILON:
                return False
            held[key] = share
            return True

    def release(self, pid: int | None = None) -> None:
        with self._locked() as held:
            held.pop(str(pid or os.getpid()), None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
