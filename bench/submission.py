"""Submission at scale: how fast ``POST /api/v1/sweeps`` accepts a grid (specs/s), and how
fast ``GET /api/v1/sweeps?limit=20`` and ``GET /api/v1/sweeps/{id}`` answer with many
experiments in the store (p50/p95 in ms).

Everything goes through the real FastAPI app (``create_app`` under Starlette's
TestClient, so the HTTP layer, validation and serialization are timed, the network is
not) on two stacks, each freshly made and removed afterwards:

- ``embedded``: the default, SQLite job store and kombu's SQLite broker under a data dir;
- ``cluster``: a fresh PostgreSQL database and Redis (``REGBENCH_BENCH_POSTGRES_URL``,
  ``REGBENCH_BENCH_REDIS_URL``; by default the local servers on 127.0.0.1).

MLflow is a local SQLite store in both. No worker runs: sent jobs wait on the broker.
The grid is ``grids/digits.yaml``'s base (a train job and three analyses per
experiment) over regularizers x seeds, fresh seeds each round so every point is new.

    python -m bench.submission [--specs 1000] [--rounds 3] [--store 10000] [--stack embedded]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.app import create_app
from bench.common import postgres_database
from regcore.spec import SweepSpec
from service import jobstore, sweeps
from service.db import Database
from service.schema import upgrade_database
from service.settings import Settings
from service.tables import Job, JobKind, JobState, utcnow

ROOT = Path(__file__).resolve().parents[1]
BASE: dict[str, Any] = yaml.safe_load((ROOT / "grids" / "digits.yaml").read_text())["base"]
REGULARIZERS: list[list[dict[str, Any]]] = [
    [],
    [{"name": "l2", "weight": 0.00025}],
    [{"name": "jacobian", "weight": 0.01, "n_proj": 1}],
    [{"name": "label_smoothing", "eps": 0.1}],
]
REDIS_URL = os.environ.get("REGBENCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
STACKS = ("embedded", "cluster")
SWEEPS = "/api/v1/sweeps"


def grid(specs: int, first_seed: int) -> dict[str, list[Any]]:
    """``specs`` distinct points: every regularizer x consecutive seeds from ``first_seed``."""
    per_regularizer = -(-specs // len(REGULARIZERS))
    regularizers = REGULARIZERS[: -(-specs // per_regularizer)]
    seeds = list(range(first_seed, first_seed + per_regularizer))
    return {"regularizers": regularizers, "training.seed": seeds}


def sweep_body(name: str, specs: int, first_seed: int) -> dict[str, Any]:
    return {"name": name, "base": BASE, "grid": grid(specs, first_seed)}


# --------------------------------------------------------------------------- stacks


@contextmanager
def stack(name: str) -> Iterator[Settings]:
    """Settings for a fresh, migrated ``embedded`` or ``cluster`` stack; removed afterwards."""
    if name not in STACKS:
        raise ValueError(f"unknown stack {name!r}; choose from {', '.join(STACKS)}")
    queue = f"bench-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="regbench-bench-") as data_dir:
        if name == "embedded":
            settings = Settings(
                data_dir=Path(data_dir), database_url=None, broker_url=None, default_queue=queue
            )
            upgrade_database(settings.job_store_url)
            yield settings
            return
        with postgres_database() as database_url:
            settings = Settings(
                data_dir=Path(data_dir),
                database_url=database_url,
                broker_url=REDIS_URL,
                default_queue=queue,
            )
            upgrade_database(settings.job_store_url)
            try:
                yield settings
            finally:
                with redis.Redis.from_url(REDIS_URL) as client:  # the queue and its bindings
                    keys = list(client.scan_iter(match=f"*{queue}*"))
                    if keys:
                        client.delete(*keys)


@contextmanager
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


# --------------------------------------------------------------------------- acceptance


def acceptance(stack_name: str, *, specs: int = 1000, rounds: int = 3) -> dict[str, Any]:
    """Specs/s of ``POST /sweeps`` with a ``specs``-point grid of new experiments: each round
    a new sweep (its own MLflow experiment, new specs), timed from request to response."""
    rates: list[float] = []
    cpu_rates: list[float] = []
    with stack(stack_name) as settings, client(settings) as http:
        http.post(SWEEPS, json=sweep_body("warm-up", 4, 10**6))  # imports, pools, MLflow
        for number in range(rounds):
            body = sweep_body(f"acceptance {number}", specs, number * specs)
            start, cpu_start = time.perf_counter(), time.process_time()
            response = http.post(SWEEPS, json=body)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            if response.status_code != 201:
                raise RuntimeError(f"POST /sweeps answered {response.status_code}: {response.text}")
            accepted = response.json()["new_experiments"]
            if accepted != specs:
                raise RuntimeError(f"expected {specs} new experiments, got {accepted}")
            rates.append(specs / seconds)
            cpu_rates.append(specs / cpu_seconds)
    return {
        "stack": stack_name,
        "specs": specs,
        "specs_per_s": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "rounds": rounds,
        # Per CPU second of this process (app, client, SQLite; not the PostgreSQL or Redis
        # servers): what a busy machine's load does not change much.
        "specs_per_cpu_s": statistics.median(cpu_rates),
    }


# --------------------------------------------------------------------------- reading


def fill(settings: Settings, *, experiments: int, sweep_size: int) -> list[str]:
    """``experiments`` experiments in sweeps of ``sweep_size``, recorded through the job
    store (not sent): every other sweep finished (jobs succeeded with durations), one
    running. Returns the sweep ids, oldest first."""
    database = Database(settings.job_store_url)
    ids: list[str] = []
    try:
        for number in range(-(-experiments // sweep_size)):
            size = min(sweep_size, experiments - number * sweep_size)
            document = SweepSpec.model_validate(
                sweep_body(f"store {number}", size, 10**7 + number * sweep_size)
            )
            planned = sweeps.plan(document, max(size, settings.max_sweep_size))
            with database.session() as session:
                submission = sweeps.submit_sweep(
                    session,
                    planned,
                    document,
                    mlflow_experiment_id="0",
                    default_queue=settings.default_queue,
                )
                session.commit()
                ids.append(submission.sweep.id)
        _finish_some(database, ids, settings)
    finally:
        database.dispose()
    return ids


def _finish_some(database: Database, sweep_ids: list[str], settings: Settings) -> None:
    now = utcnow()
    finished = sweep_ids[::2]
    with database.session() as session:
        for sweep_id in finished:
            of_sweep = select(Job.id).where(
                Job.experiment_id.in_(
                    select(sweeps.SweepMember.experiment_id).where(
                        sweeps.SweepMember.sweep_id == sweep_id
                    )
                )
            )
            session.execute(
                update(Job)
                .where(Job.id.in_(of_sweep))
                .values(
                    state=JobState.SUCCEEDED,
                    progress=1.0,
                    started_at=now - timedelta(seconds=12),
                    finished_at=now,
                )
            )
        if len(sweep_ids) > 1:  # a train job running in the newest unfinished sweep
            running = session.scalar(
                select(Job.id)
                .where(
                    Job.kind == JobKind.TRAIN,
                    Job.experiment_id.in_(
                        select(sweeps.SweepMember.experiment_id).where(
                            sweeps.SweepMember.sweep_id == sweep_ids[1]
                        )
                    ),
                )
                .limit(1)
            )
            session.execute(
                update(Job)
                .where(Job.id == running)
                .values(
                    state=JobState.RUNNING,
                    progress=0.5,
                    worker="bench-worker",
                    device="cpu",
                    started_at=now,
                    heartbeat_at=now,
                )
            )
            jobstore.worker_heartbeat(
                session, "bench-worker", "bench", settings.default_queue, "cpu"
            )
        session.commit()


def _percentiles(milliseconds: list[float]) -> dict[str, float]:
    ordered = sorted(milliseconds)
    cuts = statistics.quantiles(ordered, n=20, method="inclusive")  # 5 % steps
    return {"p50_ms": statistics.median(ordered), "p95_ms": cuts[18], "max_ms": ordered[-1]}


def _timed_gets(http: TestClient, path: str, requests: int, **params: Any) -> list[float]:
    http.get(path, params=params)  # warm-up
    times: list[float] = []
    for _ in range(requests):
        start = time.perf_counter()
        response = http.get(path, params=params)
        times.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text}")
    return times


def reading(
    stack_name: str, *, experiments: int = 10000, sweep_size: int = 1000, requests: int = 30
) -> dict[str, Any]:
    """p50/p95 of ``GET /sweeps?limit=20`` and of ``GET /sweeps/{id}`` (the newest sweep, of
    ``sweep_size`` experiments) with ``experiments`` experiments in the store."""
    with stack(stack_name) as settings:
        ids = fill(settings, experiments=experiments, sweep_size=sweep_size)
        with client(settings) as http:
            listing = _timed_gets(http, SWEEPS, requests, limit=20)
            one = _timed_gets(http, f"{SWEEPS}/{ids[-1]}", requests)
    return {
        "stack": stack_name,
        "experiments": experiments,
        "sweep_size": sweep_size,
        "list": _percentiles(listing),
        "one": _percentiles(one),
    }


# --------------------------------------------------------------------------- main


def run(
    stacks: tuple[str, ...] = STACKS,
    *,
    specs: int = 1000,
    rounds: int = 3,
    store: int = 10000,
    sweep_size: int = 1000,
    requests: int = 30,
) -> dict[str, Any]:
    """Every figure, for ``make bench``: ``{"acceptance": [...], "reading": [...]}``."""
    return {
        "acceptance": [acceptance(name, specs=specs, rounds=rounds) for name in stacks],
        "reading": [
            reading(name, experiments=store, sweep_size=sweep_size, requests=requests)
            for name in stacks
        ],
    }


def markdown(figures: dict[str, Any]) -> str:
    lines = [
        "| stack | sweep acceptance (specs/s, median [min-max]) | specs per CPU s "
        "| GET /sweeps?limit=20 p50 / p95 (ms) | GET /sweeps/{id} p50 / p95 (ms) |",
        "|---|---|---|---|---|",
    ]
    reading_of = {entry["stack"]: entry for entry in figures["reading"]}
    for entry in figures["acceptance"]:
        read = reading_of.get(entry["stack"])
        listing = f"{read['list']['p50_ms']:.1f} / {read['list']['p95_ms']:.1f}" if read else "-"
        one = f"{read['one']['p50_ms']:.1f} / {read['one']['p95_ms']:.1f}" if read else "-"
        lines.append(
            f"| {entry['stack']} | {entry['specs_per_s']:.0f} "
            f"[{entry['min']:.0f}-{entry['max']:.0f}] | {entry['specs_per_cpu_s']:.0f} "
            f"| {listing} | {one} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", action="append", choices=STACKS, help="default: both")
    parser.add_argument("--specs", type=int, default=1000, help="points per submitted sweep")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", type=int, default=10000, help="experiments in the store")
    parser.add_argument("--sweep-size", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=30, help="timed GETs per endpoint")
    args = parser.parse_args()
    figures = run(
        tuple(args.stack or STACKS),
        specs=args.specs,
        rounds=args.rounds,
        store=args.store,
        sweep_size=args.sweep_size,
        requests=args.requests,
    )
    print(markdown(figures))
    print(
        f"({args.specs}-point grids x {args.rounds} rounds; {args.store} experiments in "
        f"sweeps of {args.sweep_size} for the reads, {args.requests} requests each)"
    )


if __name__ == "__main__":
    main()
