"""``regbench worker``: one Celery worker process per GPU, or one CPU worker.

With GPUs (``--gpus 0,1``, or every GPU torch sees) each GPU gets its own
``celery -A worker.app worker`` with ``CUDA_VISIBLE_DEVICES`` set to it, concurrency 1,
queue ``gpu`` and a unique node name (``gpu0@%h``). Without GPUs one worker serves the
``cpu`` queue (``cpu@%h``).

Pool: prefork with concurrency 1. The job runs in a child process of the pool process
(``worker.supervisor``), so the worker's main process stays free for the broker, the
worker heartbeat and Celery's time limit. With ``acks_late`` and
``reject_on_worker_lost`` a killed pool process has its message requeued at once; a
killed main process leaves its message unacknowledged (Redis redelivers it after the
visibility timeout) and the job's heartbeat stale, so the reconciler's reaper requeues
it sooner. Either way the job resumes from its last checkpoint.

The launcher forwards SIGTERM and SIGINT to its workers (a warm shutdown: running jobs
finish; a second signal makes it cold) and waits for them. Workers die with the
launcher (``PR_SET_PDEATHSIG``). With the embedded broker it also runs the reconciler,
since nothing else would re-send a message lost with a dead worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from worker.reconciler import DEFAULT_GRACE_S, DEFAULT_INTERVAL_S

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessSpec:
    """A process to start: its name, command line and environment overrides."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def parse_gpus(text: str) -> list[str]:
    """``"0,1"`` -> ``["0", "1"]``; indices must be non-negative integers."""
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    for gpu in gpus:
        if not gpu.isdigit():
            raise ValueError(f"--gpus takes GPU indices like 0,1; got {gpu!r}")
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus names a GPU twice: {text!r}")
    return gpus


def celery_worker_argv(
    node: str, queues: str, concurrency: int, loglevel: str, events: bool
) -> list[str]:
    argv = [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--pool", "prefork",
        "--concurrency", str(concurrency),
        "--queues", queues,
        "--hostname", node,
        "--loglevel", loglevel,
        "--without-mingle",  # no start-up round trip to every other node
        "--without-gossip",  # many nodes on one Redis: no chatter; cancel goes via the DB
    ]  # fmt: skip
    if events:
        argv.append("--task-events")  # for Flower
    return argv


def plan_workers(
    gpus: Sequence[str] | None,
    *,
    queues: str | None = None,
    slots: int = 1,
    loglevel: str = "INFO",
    events: bool = False,
    torch_threads: int | None = None,
    cores: int | None = None,
) -> list[ProcessSpec]:
    """The worker processes to start: one per GPU, or one CPU worker when ``gpus`` is
    empty; each with ``slots`` pool processes (a warm job process each), and the node's
    cores shared among all the slots (``torch_threads`` overrides the share)."""
    processes = max(1, len(gpus or ()))
    threads = torch_threads or max(1, (cores or os.cpu_count() or 1) // (processes * slots))
    shared = {"REGBENCH_SLOTS": str(slots), "REGBENCH_TORCH_THREADS": str(threads)}
    if gpus:
        return [
            ProcessSpec(
                name=f"gpu{gpu}",
                argv=celery_worker_argv(f"gpu{gpu}@%h", queues or "gpu", slots, loglevel, events),
                env={"CUDA_VISIBLE_DEVICES": gpu, **shared},
            )
            for gpu in gpus
        ]
    argv = celery_worker_argv("cpu@%h", queues or "cpu", slots, loglevel, events)
    return [ProcessSpec(name="cpu", argv=argv, env={"CUDA_VISIBLE_DEVICES": "", **shared})]


def reconciler_process(
    interval_s: float = DEFAULT_INTERVAL_S, grace_s: float = DEFAULT_GRACE_S
) -> ProcessSpec:
    argv = [
        sys.executable, "-m", "worker.reconciler",
        "--interval", str(interval_s),
        "--grace", str(grace_s),
    ]  # fmt: skip
    return ProcessSpec(name="reconciler", argv=argv)


def detect_gpus() -> list[str]:
    """Every GPU this machine's torch sees (honouring CUDA_VISIBLE_DEVICES)."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    count = torch.cuda.device_count()
    if visible and visible != "-1":
        return [part.strip() for part in visible.split(",") if part.strip()][:count]
    return [str(index) for index in range(count)]


def check_gpus(gpus: Sequence[str]) -> None:
    """GPUs asked for by index must exist: a worker asked for a GPU that finds none fails
    here, loudly, instead of training on the CPU."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise ValueError(
            f"asked for GPU {','.join(gpus)} but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
            "use --cpu for a CPU worker"
        )
    if not os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        missing = [gpu for gpu in gpus if int(gpu) >= count]
        if missing:
            raise ValueError(f"no GPU {','.join(missing)}: torch sees {count} GPU(s)")


def _die_with_parent_hook(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``signum`` when the launcher dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, before any fork

    def hook() -> None:  # runs in the child between fork and exec
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return hook


def run_processes(workers: Sequence[ProcessSpec], helpers: Sequence[ProcessSpec] = ()) -> int:
    """Start the workers (and helpers such as the reconciler), forward SIGTERM/SIGINT,
    wait for the workers, then stop the helpers. Returns the first non-zero exit status."""
    die_with_parent = _die_with_parent_hook(signal.SIGTERM)  # a warm shutdown
    started: list[tuple[ProcessSpec, subprocess.Popen[bytes]]] = []
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for _spec, process in started:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for spec in [*workers, *helpers]:
            process = subprocess.Popen(
                spec.argv,
                env={**os.environ, **spec.env},
                start_new_session=True,  # a terminal's Ctrl-C reaches them once, via us
                preexec_fn=die_with_parent,  # safe: the launcher runs no threads
            )
            log.info("started %s (pid %d): %s", spec.name, process.pid, " ".join(spec.argv))
            started.append((spec, process))
        status = 0
        for spec, process in started[: len(workers)]:
            code = process.wait()
            log.log(
                logging.INFO if code == 0 or stopping else logging.ERROR,
                "%s exited with %d",
                spec.name,
                code,
            )
            status = status or code
        for _spec, process in started[len(workers) :]:
            if process.poll() is None:
                process.terminate()
            process.wait()
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for _spec, process in started:  # only after an error above: never leave one behind
            if process.poll() is None:
                process.kill()
                process.wait()
