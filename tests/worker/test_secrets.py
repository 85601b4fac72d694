"""The worker's processes never print a configured password: the reconciler (whose round
meets a broker that refuses) and a job process whose MLflow server is unreachable, each
with a password in every URI, at their default log level and with every logger at DEBUG."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service import jobstore
from service.broker import make_celery
from service.db import Database
from service.schema import upgrade_database
from service.settings import Settings
from tests.api.test_secrets import (
    BROKER_PASSWORD,
    DB_PASSWORD,
    DEAD_PORT,
    SECRETS,
    TRACKING_PASSWORD,
    with_password,
)
from tests.worker.conftest import FAST_SPEC, ROOT

DEBUG_EVERYWHERE = (
    "import logging, runpy, sys; logging.basicConfig(level=logging.DEBUG); "
    "logging.root.manager.loggerDict and [logging.getLogger(n).setLevel(logging.DEBUG) "
    "for n in list(logging.root.manager.loggerDict)]; sys.argv = sys.argv[1:]; "
    "runpy.run_module(sys.argv[0], run_name='__main__')"
)


def run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", DEBUG_EVERYWHERE, *argv],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_no_password_in_the_reconciler_or_a_failing_jobs_output(
    tmp_path: Path, postgres_url: str
) -> None:
    values = {
        "data_dir": str(tmp_path / "data"),
        "database_url": with_password(postgres_url, DB_PASSWORD),
        "broker_url": f"redis://:{BROKER_PASSWORD}@127.0.0.1:{DEAD_PORT}/0",
        "mlflow_tracking_uri": f"http://regbench:{TRACKING_PASSWORD}@127.0.0.1:{DEAD_PORT}",
        "broker_timeout_s": "0.5",
        "visibility_timeout_s": "60",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGBENCH_")}
    env.update({f"REGBENCH_{k.upper()}": v for k, v in values.items()}, PYTHONUNBUFFERED="1")
    env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="2")
    settings = Settings(**values)
    upgrade_database(settings.job_store_url)
    db = Database(settings.job_store_url)
    try:
        with db.session() as session:
            from regcore.spec import ExperimentSpec

            submission = jobstore.submit_experiment(
                session, ExperimentSpec.model_validate(FAST_SPEC), default_queue="cpu"
            )
            session.commit()
            job_id = jobstore.train_job(submission.experiment).id
    finally:
        db.dispose()
    make_celery(settings).close()

    reconciler = run(env, "worker.reconciler", "--once", "--grace", "0")
    job = run(env, "worker.child", job_id, "--result", str(tmp_path / "result.json"))
    result = (tmp_path / "result.json").read_text()
    assert "failed" in result, job.stderr[-3000:]
    for output in (reconciler.stdout + reconciler.stderr, job.stdout + job.stderr, result):
        assert output.strip()
        for secret in SECRETS:
            assert secret not in output, f"{secret!r} printed:\n{output[-5000:]}"
    assert f"regbench:***@127.0.0.1:{DEAD_PORT}" in job.stderr + result
