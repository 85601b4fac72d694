"""Warm job runners: each worker slot keeps a child that runs its jobs one after another.

A job still runs in a child process of its own session (``python -m worker.child
--serve``), started in a fresh interpreter: a crash, an out-of-memory kill or a cancel
never takes the worker down, CUDA is never initialised before a fork, and the child's
memory goes back to the system when it is replaced. What changes is that the child is
started once per slot, not once per job: it imports torch, regcore, SQLAlchemy and
MLflow, warms up the optimizer machinery, and then waits for jobs on a pipe, keeping
its database engine, MLflow client and (small) datasets between them.

The slot replaces its child after a job that did not succeed (failed, cancelled,
crashed, timed out), after ``runner_max_jobs`` jobs, or when the idle child's resident
memory passes ``runner_max_memory_mb``; the replacement starts at once, so it warms up
while the supervisor records the job that just ended. ``warm_runners = false`` gives
the old cold start: a fresh child for every job.

Protocol: one JSON line per request on the child's request pipe,
``{"job_id", "worker", "result", "log"}`` (or, for train jobs that train as one stacked
model, ``{"job_ids", "worker", "results", "log"}``); one JSON line per finished request
on the response pipe, ``{"job_id", "code"}``; the child's result files say the rest
(``worker.supervisor.ChildReport``). The child writes ``{"ready": true}`` once warm.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RunnerChild:
    """One warm child: its process and the two pipes to it."""

    process: subprocess.Popen[bytes]
    requests: int  # write end: JSON lines to the child
    responses: int  # read end: JSON lines from the child
    started_at: float = field(default_factory=time.monotonic)
    jobs: int = 0  # jobs sent to it so far
    ready: bool = False
    _buffer: bytes = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, request: dict[str, Any]) -> None:
        os.write(self.requests, (json.dumps(request) + "\n").encode())
        self.jobs += 1

    def wait(self, timeout: float) -> int | None:
        """The job's exit code once it is done: the child's answer, or the process's exit
        status if it died first (negative: killed by that signal). None on timeout."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            message = self._next_message(max(0.0, deadline - time.monotonic()))
            if message is None:
                return None
            if "code" in message:
                return int(message["code"])
            if message.get("ready"):
                self.ready = True
            elif message.get("eof"):
                return self.process.wait()

    def wait_ready(self, timeout: float) -> bool:
        """Wait for the warm-up to end (used by benchmarks and tests)."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            message = self._next_message(max(0.0, deadline - time.monotonic()))
            if message is None or message.get("eof"):
                return False
            if message.get("ready"):
                self.ready = True
        return True

    def _next_message(self, timeout: float) -> dict[str, object] | None:
        while b"\n" not in self._buffer:
            readable, _, _ = select.select([self.responses], [], [], timeout)
            if not readable:
                return None
            chunk = os.read(self.responses, 65536)
            if not chunk:
                return {"eof": True}
            self._buffer += chunk
            timeout = 0.0 if b"\n" in self._buffer else timeout
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            log.warning("runner %d: unreadable message %r", self.pid, line[:200])
            return {}

    def rss_mb(self) -> float | None:
        """Resident memory of the child (its whole process group would be more, but the
        child itself is what keeps caches)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def close(self) -> None:
        for fd in (self.requests, self.responses):
            with contextlib.suppress(OSError):
                os.close(fd)


CGROUP_ROOT = Path("/sys/fs/cgroup")


def memory_cgroup(pid: int, root: Path = CGROUP_ROOT) -> Path | None:
    """The directory of the memory cgroup process ``pid`` is in (cgroup v2 or v1); the
    mount's root when the recorded path is not visible (a container's namespace)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: one hierarchy
            base, marker = root, "memory.events"
        elif "memory" in controllers.split(","):  # cgroup v1: the memory controller's
            base, marker = root / "memory", "memory.oom_control"
        else:
            continue
        for candidate in (base / path.lstrip("/"), base):
            if (candidate / marker).exists():
                return candidate
    return None


def oom_kills(cgroup: Path | None) -> int | None:
    """How many processes the kernel's OOM killer has killed in that cgroup (its
    ``oom_kill`` counter: memory.events in v2, memory.oom_control in v1); None if unknown."""
    if cgroup is None:
        return None
    for name in ("memory.events", "memory.oom_control"):
        try:
            text = (cgroup / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return None


def spawn_child(settings: Settings, log_file: Path | None = None) -> RunnerChild:
    """Start ``python -m worker.child --serve`` in its own session, with two pipes."""
    request_read, request_write = os.pipe()
    response_read, response_write = os.pipe()
    command = [
        sys.executable, "-m", "worker.child", "--serve",
        "--requests", str(request_read),
        "--responses", str(response_write),
        "--parent-pid", str(os.getpid()),
    ]  # fmt: skip
    env = {**os.environ, **thread_env(settings)}
    output = log_file.open("ab") if log_file is not None else None
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            pass_fds=(request_read, response_write),
            start_new_session=True,  # its own process group: stop it, not the worker
            env=env,
        )
    finally:
        os.close(request_read)
        os.close(response_write)
        if output is not None:
            output.close()
    os.set_inheritable(request_write, False)
    os.set_inheritable(response_read, False)
    log.info("runner child %d started", process.pid)
    return RunnerChild(process, request_write, response_read)


def torch_threads(settings: Settings) -> int:
    """Threads per job: the setting, else this node's cores shared among its slots."""
    if settings.torch_threads:
        return settings.torch_threads
    return max(1, (os.cpu_count() or 1) // max(1, settings.slots))


def thread_env(settings: Settings) -> dict[str, str]:
    """Set before the child imports torch: OpenMP/MKL read these once, at load time.

    OpenMP's threads spin while they wait for work by default; on a node whose cores are
    busy with anything else (another slot, the API, a second job) the spinning threads
    take the cores from the ones with work. Measured on 2 cores, LeNet on digits: with
    both cores busy, 3 epochs took 16 s with 2 spinning threads, 2.4 s with passive
    waiting, 1.6 s with one thread; on idle cores passive waiting doubles a step (5 epochs:
    1.47 s against 0.75 s). Passive is the default because its worst case is 2x, not 10x;
    ``OMP_WAIT_POLICY`` in the worker's environment overrides it."""
    threads = str(torch_threads(settings))
    return {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "REGBENCH_TORCH_THREADS": threads,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }


class Slot:
    """One worker slot (one Celery pool process) and its warm child."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.child: RunnerChild | None = None

    @property
    def warm(self) -> bool:
        return self.settings.warm_runners

    def prewarm(self) -> None:
        """Start the child now, so the first job finds it warm."""
        if self.warm and (self.child is None or not self.child.alive()):
            self._replace(None)

    def start_job(self, request: dict[str, Any]) -> RunnerChild:
        """Hand a job to the warm child (started now if there is none)."""
        child = self.child
        if child is None or not child.alive():
            child = self._replace(child)
        try:
            child.send(request)
        except OSError:  # it died between the check and the write: a fresh one
            child = self._replace(child)
            child.send(request)
        return child

    def job_ended(self, child: RunnerChild, code: int | None, stopped: bool) -> None:
        """Keep the child for the next job, or replace it (and start the new one now)."""
        reason = self._recycle_reason(child, code, stopped)
        if reason is None:
            return
        log.info("runner child %d replaced: %s", child.pid, reason)
        self._stop(child)
        self.child = None
        if self.warm:
            self._replace(None)

    def shutdown(self) -> None:
        if self.child is not None:
            self._stop(self.child)
            self.child = None

    def _recycle_reason(self, child: RunnerChild, code: int | None, stopped: bool) -> str | None:
        if not self.warm:
            return "cold start (warm_runners is off)"
        if stopped:
            return "the job was stopped"
        if code != 0 or not child.alive():
            return f"the job ended with status {code}"
        if child.jobs >= self.settings.runner_max_jobs:
            return f"{child.jobs} jobs run (runner_max_jobs)"
        rss = child.rss_mb()
        if rss is not None and rss > self.settings.runner_max_memory_mb:
            return f"{rss:.0f} MB resident, over runner_max_memory_mb"
        return None

    def _replace(self, old: RunnerChild | None) -> RunnerChild:
        if old is not None:
            self._stop(old)
        self.child = spawn_child(self.settings)
        return self.child

    @staticmethod
    def _stop(child: RunnerChild) -> None:
        from worker.supervisor import STOP_GRACE_S, stop_process_group

        if child.alive():
            stop_process_group(child.process, STOP_GRACE_S)
        child.close()


_slots: dict[int, Slot] = {}


def current_slot(settings: Settings) -> Slot:
    """This process's slot (pool processes fork from the worker: one slot per pid). Other
    settings than the slot's (only ever in tests) give a new slot and a new child."""
    pid = os.getpid()
    slot = _slots.get(pid)
    if slot is None or slot.settings != settings:
        for other in _slots.values():
            if other is slot:  # a forked copy of the parent's slot is not ours to stop
                other.shutdown()
        _slots.clear()
        _slots[pid] = slot = Slot(settings)
    return slot


def shutdown_slots() -> None:
    """Stop this process's warm child (tests that supervise jobs in-process)."""
    slot = _slots.pop(os.getpid(), None)
    if slot is not None:
        slot.shutdown()
