"""Jobs sent in bulk (``enqueue_many``: a queue's first job through Celery's send_task,
the others published as copies of its message) are run by the real worker, each once."""

from __future__ import annotations

import pytest

from service import jobstore
from service.broker import enqueue_many
from service.tables import Experiment
from tests.worker.conftest import FAST_SPEC, Backend, spec_with

pytestmark = pytest.mark.slow


def test_a_bulk_sent_batch_is_run_by_the_worker(backend: Backend) -> None:
    experiments = [
        backend.submit(spec_with(FAST_SPEC, training={**FAST_SPEC["training"], "seed": seed}),
                       send=False)
        for seed in (11, 12, 13)
    ]  # fmt: skip
    with backend.db.session() as session:
        trains = [jobstore.train_job(session.get(Experiment, e)) for e in experiments]  # type: ignore[arg-type]
        jobs = [(train.id, train.queue) for train in trains]
    assert enqueue_many(backend.celery, jobs, backend.settings.broker_timeout_s) == [
        job_id for job_id, _ in jobs
    ]
    with backend.db.session() as session:
        jobstore.mark_enqueued(session, [job_id for job_id, _ in jobs])
        session.commit()
    backend.start_launcher(*(["--no-reconcile"] if backend.name == "cluster" else []))

    def finished() -> bool:
        return all(
            backend.train(experiment_id).state in ("succeeded", "failed", "cancelled")
            for experiment_id in experiments
        )

    backend.wait(finished, 180, "the three train jobs to finish", every=0.1)
    for experiment_id in experiments:
        train = backend.train(experiment_id)
        assert train.state == "succeeded", f"{train}\n{backend.processes.logs()}"
        assert train.attempt == 1  # delivered once, claimed once
