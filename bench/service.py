"""The service: what a job pays besides its own work, and how soon it starts.

Each stack is started as ``regbench serve`` starts it (``service.serve.stack_commands``:
the API under uvicorn, ``regbench worker --reconcile`` with its warm job runner), on a
fresh data directory and a broker of its own (so its worker serves the usual queues and
no other worker takes its jobs), and everything goes through HTTP:

- submit-to-running: tiny training jobs (LeNet, one epoch of scikit-learn's digits) are
  POSTed one at a time to an idle worker (after a warm-up job); the latency is the job
  store's ``started_at - created_at`` (claimed minus recorded), p50 and p95;
- per-job fixed overhead: the same jobs' ``finished_at - started_at`` minus their own
  training seconds (``train_seconds``, the epochs with their validation): start-up,
  dataset load, MLflow run, final evaluation, checkpoint upload, recording;
- a small sweep: ``grids/digits.yaml`` (6 experiments with their analyses) POSTed as a
  sweep, its wall time (first job recorded to last job finished) against the sum of its
  training times, and against ``regbench run grids/digits.yaml`` (the same jobs in one
  process, timed from the command's start to its exit).

Stacks: ``embedded`` (the default: SQLite job store, kombu's SQLite broker, local MLflow)
and ``cluster`` (PostgreSQL and Redis on 127.0.0.1, ``REGBENCH_BENCH_POSTGRES_URL`` and
``REGBENCH_BENCH_REDIS_URL`` to point elsewhere; local MLflow). The sweep runs on the
embedded stack only. Figures are wall time on a machine that others may share.
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import (
    BenchContext,
    SectionResult,
    SectionUnavailable,
    Spread,
    postgres_database,
)

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = ROOT / "grids" / "digits.yaml"
# A Redis database for the bench alone (its worker serves the usual queues); default: an
# empty database of the server on 127.0.0.1, flushed afterwards.
REDIS_URL = os.environ.get("REGBENCH_BENCH_REDIS_URL")
REDIS_RESERVED_DBS = {0, 11}  # people's own; the API tests'
FINISHED = {"succeeded", "failed", "cancelled"}
TINY_SPEC: dict[str, Any] = {
    "name": "bench-tiny",
    "dataset": {"name": "digits"},
    "model": {"name": "lenet"},
    "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu"},
}
# Issue 11's targets.
LATENCY_P50_TARGET_MS = {"embedded": 300.0, "cluster": 50.0}
OVERHEAD_TARGET_S = 0.5
SWEEP_TARGET = 1.3  # service wall / in-process wall


@dataclass
class Service:
    name: str
    http: httpx.Client
    logs: Path


# --------------------------------------------------------------------------- stacks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def _redis_database() -> Iterator[str]:
    """An empty Redis database (flushed afterwards), or the one REGBENCH_BENCH_REDIS_URL names."""
    import redis

    if REDIS_URL is not None:
        yield REDIS_URL
        return
    if not _port_open("127.0.0.1", 6379):
        raise SectionUnavailable("Redis is not reachable on 127.0.0.1:6379")
    free = []
    for number in sorted(set(range(1, 16)) - REDIS_RESERVED_DBS):
        with redis.Redis(host="127.0.0.1", port=6379, db=number) as client:
            if client.dbsize() == 0:
                free.append(number)
    if not free:
        raise SectionUnavailable("no empty Redis database (1-15) on 127.0.0.1:6379")
    url = f"redis://127.0.0.1:6379/{random.choice(free)}"
    try:
        yield url
    finally:
        with redis.Redis.from_url(url) as client:
            client.flushdb()


@contextmanager
def _stack_urls(name: str) -> Iterator[dict[str, str]]:
    """REGBENCH_* settings of the stack's job store and broker (none: the embedded default)."""
    if name == "embedded":
        yield {}
        return
    with postgres_database() as database_url, _redis_database() as broker_url:
        yield {"database_url": database_url, "broker_url": broker_url}


@contextmanager
def service_stack(ctx: BenchContext, name: str) -> Iterator[Service]:
    """The API and one worker (with the reconciler), as ``regbench serve`` starts them."""
    from service.schema import upgrade_database
    from service.serve import Stack, prepare_tracking_store, stack_commands, wait_healthy
    from service.settings import Settings

    data_dir = ctx.workdir / f"service-{name}"
    logs = data_dir / "logs"
    logs.mkdir(parents=True)
    with _stack_urls(name) as urls:
        values = {"data_dir": str(data_dir), **urls}
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGBENCH_")}
        env |= {f"REGBENCH_{key.upper()}": value for key, value in values.items()}
        env["PYTHONUNBUFFERED"] = "1"
        settings = Settings(**values)  # type: ignore[arg-type]
        upgrade_database(settings.job_store_url)
        prepare_tracking_store(settings)
        port = _free_port()
        stack = Stack(env, logs)
        commands = stack_commands(settings, "127.0.0.1", port, None)
        try:
            for process, command in commands.items():
                stack.start(process, command)
            wait_healthy(f"http://127.0.0.1:{port}/healthz", stack, timeout_s=120)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                yield Service(name, http, logs)
        finally:
            stack.stop()


# --------------------------------------------------------------------------- measuring


def _seconds(start: str | None, end: str | None) -> float:
    if start is None or end is None:
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _wait(
    probe: Callable[[], Any], timeout_s: float, what: str, service: Service, every: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := probe()) is not None:
            return value
        time.sleep(every)
    tail = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                   for p in sorted(service.logs.glob("*.log")))  # fmt: skip
    raise RuntimeError(
        f"{service.name}: timed out after {timeout_s:.0f} s waiting for {what}{tail}"
    )


def run_experiment(service: Service, spec: dict[str, Any], timeout_s: float = 300) -> dict:
    """POST one spec and wait for it to finish; its body (jobs with timestamps, metrics)."""
    response = service.http.post("/api/v1/experiments", json=spec)
    if response.status_code != 201:
        raise RuntimeError(f"POST /experiments answered {response.status_code}: {response.text}")
    experiment_id = response.json()["id"]

    def finished() -> dict[str, Any] | None:
        body = service.http.get(f"/api/v1/experiments/{experiment_id}").json()
        states = {job["state"] for job in body["jobs"]}
        if not states or not states <= FINISHED:
            return None
        # a succeeded experiment's metrics may be recorded a moment after its jobs' states
        return body if body["metrics"] or states != {"succeeded"} else None

    body = _wait(finished, timeout_s, f"experiment {experiment_id}", service)
    failed = [j for j in body["jobs"] if j["state"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{service.name}: a bench job did not succeed: {failed[0]}")
    return body


def tiny_jobs(service: Service, count: int) -> dict[str, Any]:
    """Submit-to-running latencies and fixed overheads of ``count`` tiny jobs, one at a time."""
    run_experiment(service, _tiny(10**6 + random.randrange(10**6)))  # warm-up
    latencies_ms, overheads, walls, trains = [], [], [], []
    for number in range(count):
        body = run_experiment(service, _tiny(number))
        (job,) = body["jobs"]
        wall = _seconds(job["started_at"], job["finished_at"])
        train = float(body["metrics"]["train_seconds"])
        latencies_ms.append(1e3 * _seconds(job["created_at"], job["started_at"]))
        overheads.append(wall - train)
        walls.append(wall)
        trains.append(train)
    return {
        "latency_p50_ms": statistics.median(latencies_ms),
        "latency_p95_ms": _percentile(latencies_ms, 0.95),
        "overhead_s": Spread.of(overheads).as_json(),
        "job_wall_s": statistics.median(walls),
        "train_s": statistics.median(trains),
        "jobs": count,
    }


def _tiny(seed: int) -> dict[str, Any]:
    return {**TINY_SPEC, "training": {**TINY_SPEC["training"], "seed": seed}}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)  # linear interpolation between order statistics
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def sweep(service: Service, timeout_s: float = 1800) -> dict[str, Any]:
    """``grids/digits.yaml`` as one sweep: wall time (first job recorded to last finished)
    and the sum of the experiments' training seconds."""
    document = yaml.safe_load(SWEEP_FILE.read_text())
    document["name"] = f"bench {uuid.uuid4().hex[:8]}"
    response = service.http.post("/api/v1/sweeps", json=document)
    if response.status_code != 201:
        raise RuntimeError(f"POST /sweeps answered {response.status_code}: {response.text}")
    submitted = response.json()
    sweep_id = submitted["id"]

    def finished() -> dict[str, Any] | None:
        body = service.http.get(f"/api/v1/sweeps/{sweep_id}").json()
        return body if body["status"] in FINISHED else None

    status = _wait(finished, timeout_s, f"sweep {sweep_id}", service, every=0.5)
    if status["status"] != "succeeded":
        raise RuntimeError(f"{service.name}: the sweep ended {status['status']}: {status}")
    bodies = [
        service.http.get(f"/api/v1/experiments/{point['id']}").json()
        for point in submitted["experiments"]
    ]
    jobs = [job for body in bodies for job in body["jobs"]]
    first = min(job["created_at"] for job in jobs)
    last = max(job["finished_at"] for job in jobs)
    return {
        "experiments": len(bodies),
        "jobs": len(jobs),
        "wall_s": _seconds(first, last),
        "train_s": sum(float(body["metrics"]["train_seconds"]) for body in bodies),
    }


def in_process_sweep(ctx: BenchContext) -> dict[str, Any]:
    """``regbench run grids/digits.yaml``: the same experiments in one process (wall time)."""
    data_dir = ctx.workdir / "in-process"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGBENCH_")}
    env["REGBENCH_DATA_DIR"] = str(data_dir)
    command = [sys.executable, "-m", "client.cli", "run", str(SWEEP_FILE), "--quiet", "--json"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"regbench run failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"wall_s": wall}


# --------------------------------------------------------------------------- the section


def run(ctx: BenchContext) -> SectionResult:
    jobs = 2 if ctx.quick else 10
    rows: list[dict[str, Any]] = []
    notes = [
        f"Tiny job: LeNet, 1 epoch of digits (batch 32), no analyses; {jobs} jobs one at a "
        "time on an idle worker after a warm-up job. Latency: created_at -> started_at in "
        "the job store. Overhead: (finished_at - started_at) - train_seconds, median "
        "[IQR]. Sweep: grids/digits.yaml through the service (first job recorded -> last "
        "finished) against `regbench run grids/digits.yaml` (command start -> exit). Wall "
        "time; the machine may be shared.",
    ]
    for name in ("embedded", "cluster"):
        try:
            with service_stack(ctx, name) as service:
                ctx.log(f"service: {name} stack up; {jobs} tiny jobs")
                figures = tiny_jobs(service, jobs)
                rows += _job_rows(name, figures)
                if name == "embedded" and not ctx.quick:
                    ctx.log("service: grids/digits.yaml through the service")
                    through = sweep(service)
                    ctx.log("service: grids/digits.yaml in one process")
                    local = in_process_sweep(ctx)
                    rows.append(_sweep_row(name, through, local))
        except SectionUnavailable as exc:
            rows.append({"stack": name, "figure": "not measured", "detail": str(exc)})
    return SectionResult(rows, notes)


def _job_rows(stack: str, figures: dict[str, Any]) -> list[dict[str, Any]]:
    p50_target = LATENCY_P50_TARGET_MS[stack]
    overhead = figures["overhead_s"]
    return [
        {
            "stack": stack,
            "figure": "submit-to-running p50 (ms)",
            "value": figures["latency_p50_ms"],
            "target": f"<= {p50_target:g}",
            "meets": figures["latency_p50_ms"] <= p50_target,
            "detail": f"p95 {figures['latency_p95_ms']:.0f} ms over {figures['jobs']} jobs",
        },
        {
            "stack": stack,
            "figure": "per-job fixed overhead (s)",
            "value": overhead,
            "target": f"<= {OVERHEAD_TARGET_S:g}",
            "meets": overhead["median"] <= OVERHEAD_TARGET_S,
            "detail": f"job {figures['job_wall_s']:.2f} s, of which training "
            f"{figures['train_s']:.2f} s (medians)",
        },
    ]


def _sweep_row(stack: str, through: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    ratio = through["wall_s"] / local["wall_s"]
    return {
        "stack": stack,
        "figure": "grids/digits.yaml: service wall / in-process wall",
        "value": ratio,
        "target": f"<= {SWEEP_TARGET:g}",
        "meets": ratio <= SWEEP_TARGET,
        "detail": f"service {through['wall_s']:.1f} s ({through['experiments']} experiments, "
        f"{through['jobs']} jobs), in one process {local['wall_s']:.1f} s, sum of training "
        f"{through['train_s']:.1f} s (service wall / training "
        f"{through['wall_s'] / through['train_s']:.1f}x)",
    }
