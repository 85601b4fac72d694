"""Load held: 10,000 queued experiments in the store, and the read endpoints a dashboard
polls still answer correctly; their latencies (p50/p95 over 20 requests each, through the
real app) go to the README's reliability section. No wall-clock threshold is asserted:
the figures are recorded, the answers are checked.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.submission import BASE, sweep_body
from regcore.spec import SweepSpec
from service import sweeps
from service.db import Database
from service.settings import Settings
from tests.api.conftest import start_api
from tests.reliability import write_record

EXPERIMENTS = 10_000
SWEEP_SIZE = 1_000
REQUESTS = 20
JOBS = EXPERIMENTS * (1 + len(BASE["analyses"]))  # a train job and one per analysis
READS = {  # path -> how many rows the answer lists
    "/api/v1/sweeps?limit=20": 10,
    "/api/v1/experiments?limit=50": 50,
    "/api/v1/queue": None,
}


def fill(settings: Settings, database: Database) -> float:
    """``EXPERIMENTS`` queued experiments in sweeps of ``SWEEP_SIZE``, through the job store
    (as a large POST records them, without the broker); returns the seconds it took."""
    start = time.perf_counter()
    for number in range(EXPERIMENTS // SWEEP_SIZE):
        document = SweepSpec.model_validate(
            sweep_body(f"load {number}", SWEEP_SIZE, number * SWEEP_SIZE)
        )
        planned = sweeps.plan(document, SWEEP_SIZE)
        with database.session() as session:
            sweeps.submit_sweep(
                session,
                planned,
                document,
                mlflow_experiment_id="0",
                default_queue=settings.default_queue,
            )
            session.commit()
    return time.perf_counter() - start


def test_ten_thousand_queued_experiments(any_settings: Settings, reliability_out: Path) -> None:
    store = "embedded" if any_settings.database_url is None else "cluster"
    for api in start_api(any_settings):
        fill_s = fill(any_settings, api.database)
        reads: dict[str, dict[str, float]] = {}
        for path, rows in READS.items():
            timings = []
            for _ in range(REQUESTS):
                start = time.perf_counter()
                response = api.client.get(path)
                timings.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, response.text
                body = response.json()
                if rows is not None:
                    assert len(body["data"]) == rows
                    expected = EXPERIMENTS if "experiments" in path else EXPERIMENTS // SWEEP_SIZE
                    assert body["count"] == expected
                else:
                    assert body["by_state"]["queued"] == jobs_of(body) == JOBS
            cuts = statistics.quantiles(timings, n=20)
            reads[path] = {
                "p50_ms": statistics.median(timings),
                "p95_ms": cuts[18],
                "requests": REQUESTS,
            }
        write_record(
            reliability_out,
            f"load-{store}",
            {
                "kind": "load",
                "store": store,
                "experiments": EXPERIMENTS,
                "jobs": jobs_of(api.client.get("/api/v1/queue").json()),
                "fill_s": round(fill_s, 1),
                "reads": reads,
            },
        )


def jobs_of(queue: dict[str, object]) -> int:
    return sum(queue["by_state"].values())  # type: ignore[attr-defined]
