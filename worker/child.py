"""A job's own process: ``python -m worker.child JOB_ID [--worker NAME] [--result FILE]``.

Started by ``worker.supervisor`` in a fresh interpreter. It re-reads the job and its
experiment from the job store and runs it:

- a train job opens the experiment's MLflow run once (a redelivered job reopens the run
  its first attempt stored, so a job never has two runs), stores the run id BEFORE
  training, then calls ``regcore.pipeline.run`` on the spec without its analyses (they
  are jobs of their own) in ``runs_dir/<experiment id>``: a redelivered job finds
  ``last.pt`` there and resumes exactly where the last epoch's checkpoint left it;
- an analysis job loads the train job's ``model.pt`` (from the working directory, else
  from the MLflow run) and calls ``regcore.pipeline.analyze``, logging into that run.

Progress (epoch / epochs and a message) goes to the job store; the result (metrics or
the error) goes to the ``--result`` file for the supervisor, which records the final
state. SIGTERM is a cooperative stop: the training loop finishes its step and stops
(the last epoch's checkpoint is on disk); outside training it stops at once.

Exit status: 0 succeeded, 1 failed, 3 stopped by a signal.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from service import jobstore
from service.db import Database
from service.settings import Settings
from service.tables import Experiment, Job, JobKind
from worker.supervisor import EXIT_CANCELLED, EXIT_FAILED, EXIT_SUCCEEDED

if TYPE_CHECKING:
    from regcore.spec import ExperimentSpec
    from service.tracking import MlflowTracker

log = logging.getLogger("worker.child")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_ORPHANED = 4


class JobStoppedError(Exception):
    """SIGTERM/SIGINT outside the training loop."""


class StopFlag:
    """SIGTERM/SIGINT handler: a flag while training checks it, an exception elsewhere."""

    def __init__(self) -> None:
        self.requested = False
        self.cooperative = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        first = not self.requested
        self.requested = True
        if first:
            log.warning("received %s: stopping", signal.Signals(signum).name)
        if not self.cooperative:
            raise JobStoppedError(f"stopped by {signal.Signals(signum).name}")

    def should_cancel(self) -> bool:
        return self.requested

    @contextmanager
    def cooperatively(self) -> Iterator[None]:
        self.cooperative = True
        try:
            yield
        finally:
            self.cooperative = False


def die_with_parent(parent_pid: int | None) -> None:
    """Be killed when the supervisor dies (it may be SIGKILLed): never train unsupervised."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:  # it died before prctl
        os._exit(EXIT_ORPHANED)


# --------------------------------------------------------------------------- job store


@dataclass(frozen=True)
class JobInfo:
    """The job and its experiment as read at start (plain values: no session needed)."""

    id: str
    kind: str
    worker: str
    payload: dict[str, Any] | None
    depends_on: str | None
    mlflow_run_id: str | None
    experiment_id: str
    experiment_name: str
    sweep_id: str | None
    configuration: str | None
    spec: dict[str, Any]
    spec_hash: str
    experiment_run_id: str | None
    mlflow_experiment_id: str | None


def read_job(db: Database, job_id: str, worker: str | None) -> JobInfo:
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(f"job {job_id} does not exist in the job store")
        experiment: Experiment = job.experiment
        sweep = experiment.sweep
        return JobInfo(
            id=job.id,
            kind=job.kind,
            worker=worker or job.worker or "",
            payload=job.payload,
            depends_on=job.depends_on,
            mlflow_run_id=job.mlflow_run_id,
            experiment_id=experiment.id,
            experiment_name=experiment.name,
            sweep_id=experiment.sweep_id,
            configuration=experiment.configuration,
            spec=experiment.spec,
            spec_hash=experiment.spec_hash,
            experiment_run_id=experiment.mlflow_run_id,
            mlflow_experiment_id=experiment.mlflow_experiment_id
            or (sweep.mlflow_experiment_id if sweep is not None else None),
        )


class ProgressReporter:
    """Writes progress and a message to the job (only while this worker holds it)."""

    def __init__(self, db: Database, job: JobInfo, min_interval_s: float) -> None:
        self.db, self.job, self.min_interval_s = db, job, min_interval_s
        self.last_write = 0.0

    def write(self, progress: float | None, message: str | None = None) -> None:
        try:
            with self.db.session() as session:
                jobstore.heartbeat(
                    session, self.job.id, self.job.worker, progress=progress, message=message
                )
                session.commit()
        except SQLAlchemyError as exc:  # progress is informative: never fail a job for it
            log.warning("progress not recorded: %s", exc)
        self.last_write = time.monotonic()

    def throttled(self, progress: float) -> None:
        if time.monotonic() - self.last_write >= self.min_interval_s:
            self.write(progress)


# --------------------------------------------------------------------------- MLflow


class PinnedSpecHashTracker:
    """Passes calls to the MLflow tracker; keeps the run's ``spec_hash`` tag equal to the
    experiment's (the pipeline sees the spec without analyses, whose hash differs)."""

    def __init__(self, inner: MlflowTracker, spec_hash: str) -> None:
        self.inner, self.spec_hash = inner, spec_hash

    def log_params(self, params: Mapping[str, str]) -> None:
        self.inner.log_params(params)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.inner.set_tags({**tags, "spec_hash": self.spec_hash})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.inner.log_metrics(metrics, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)


def mlflow_experiment_name(client: Any, job: JobInfo, settings: Settings) -> str:
    """The MLflow experiment of a new run: the one made at submit, else the default one
    (created here if missing; a concurrent creation by another job is fine)."""
    from service.tracking import ensure_experiment

    if job.mlflow_experiment_id:
        return client.get_experiment(job.mlflow_experiment_id).name
    name = settings.mlflow_experiment
    ensure_experiment(client, name, settings.mlflow_artifact_location(name))
    return name


def reopen_run(settings: Settings, run_id: str) -> MlflowTracker:
    from mlflow.tracking import MlflowClient

    from service.tracking import MlflowTracker

    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
    return MlflowTracker(settings.tracking_uri, experiment.name, run_id=run_id)


def open_train_run(settings: Settings, db: Database, job: JobInfo) -> tuple[MlflowTracker, bool]:
    """The train job's MLflow run, created once: (tracker, reopened)."""
    from mlflow.tracking import MlflowClient

    from regcore.pipeline import environment_tags
    from service.tracking import MlflowTracker

    client = MlflowClient(settings.tracking_uri)
    run_id = job.mlflow_run_id or job.experiment_run_id
    name = None
    if run_id is None:
        # A run created by an attempt that died before storing its id carries the job id.
        name = mlflow_experiment_name(client, job, settings)
        experiment_id = client.get_experiment_by_name(name).experiment_id
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`regbench.job_id` = '{job.id}'", max_results=1
        )
        run_id = found[0].info.run_id if found else None
    if run_id is not None:
        tracker, reopened = reopen_run(settings, run_id), True
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {
            "regbench.job_id": job.id,
            "regbench.experiment_id": job.experiment_id,
            "regbench.sweep_id": job.sweep_id or "",
            "regbench.configuration": job.configuration or "",
            "regbench.source": "worker",
            "spec_hash": job.spec_hash,
            **environment_tags(),
        }
        tracker = MlflowTracker(
            settings.tracking_uri,
            name or mlflow_experiment_name(client, job, settings),
            artifact_root=None if settings.tracking_is_server else settings.artifact_root,
            run_name=job.configuration or job.experiment_name,
            tags=tags,
        )
        reopened = False
    with db.session() as session:  # stored before training: a redelivery reopens it
        jobstore.set_mlflow_run(session, job.id, tracker.run_id)
        session.commit()
    return tracker, reopened


def backfill_epochs(tracker: MlflowTracker, history: list[dict[str, float]]) -> None:
    """Log checkpointed epochs the killed attempt had no time to log (it dies between
    saving ``last.pt`` and logging that epoch at worst); never log an epoch twice."""
    logged = {metric.step for metric in tracker.client.get_metric_history(tracker.run_id, "lr")}
    for row in history:
        epoch = int(row["epoch"])
        if epoch not in logged:
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)


# --------------------------------------------------------------------------- the jobs


def json_safe(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers JSON (and PostgreSQL's json) can hold: nan and inf become None."""
    from regcore.analysis.base import as_json_value

    return {key: as_json_value(value) for key, value in metrics.items()}


def run_train(
    settings: Settings, db: Database, job: JobInfo, spec: ExperimentSpec, stop: StopFlag
) -> dict[str, Any]:
    from regcore.data import load_dataset
    from regcore.pipeline import run as run_pipeline
    from regcore.train import Callbacks, load_checkpoint

    reporter = ProgressReporter(db, job, settings.heartbeat_interval_s)
    workdir = settings.runs_dir / job.experiment_id
    data = load_dataset(spec.dataset, spec.training.seed)  # before MLflow: no empty runs
    tracker, reopened = open_train_run(settings, db, job)
    report: dict[str, Any] = {"mlflow_run_id": tracker.run_id}

    resumed_from = 0
    last = workdir / "last.pt"
    if last.exists():
        checkpoint = load_checkpoint(last)
        resumed_from = int(checkpoint["epoch"])
        if reopened:
            backfill_epochs(tracker, list(checkpoint["history"]))
        del checkpoint
        tracker.set_tags({"regbench.resumed_from_epoch": str(resumed_from)})
        log.info("resuming from the checkpoint of epoch %d", resumed_from)
    resumed = f" (resumed from epoch {resumed_from})" if resumed_from else ""
    epochs = spec.training.epochs
    first = min(resumed_from + 1, epochs)
    reporter.write(
        min(resumed_from / epochs, 1.0), f"training from epoch {first}/{epochs}{resumed}"
    )

    def on_step(epoch: int, step: int, steps: int) -> None:
        reporter.throttled((epoch - 1 + step / steps) / epochs)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        shown = [f"loss {metrics['train/loss']:.4g}", f"accuracy {metrics['train/accuracy']:.3f}"]
        if "val/accuracy" in metrics:
            shown.append(f"val accuracy {metrics['val/accuracy']:.3f}")
        reporter.write(epoch / epochs, f"epoch {epoch}/{epochs}: {', '.join(shown)}{resumed}")

    # Analyses are jobs of their own; the run keeps the experiment's spec hash.
    train_spec = spec.model_copy(update={"analyses": []})
    try:
        with stop.cooperatively():
            result = run_pipeline(
                train_spec,
                PinnedSpecHashTracker(tracker, job.spec_hash),
                workdir=workdir,
                data=data,
                callbacks=Callbacks(on_step, on_epoch, stop.should_cancel),
            )
    except BaseException as exc:
        from regcore.train import TrainingCancelledError

        if not isinstance(exc, TrainingCancelledError | JobStoppedError):
            try:  # a cancel is marked by the supervisor (KILLED)
                tracker.finish("FAILED")
                report["mlflow_closed"] = True
            except Exception as close_error:  # the job's error matters more
                log.warning("could not mark the MLflow run FAILED: %s", close_error)
        raise RunError(exc, report) from exc
    tracker.finish("FINISHED")
    metrics = {**result.metrics, "spec_hash": job.spec_hash}
    accuracy = metrics.get("test_accuracy")
    summary = f"; test accuracy {accuracy:.4f}" if isinstance(accuracy, float) else ""
    reporter.write(None, f"trained {result.metrics.get('epochs', epochs)} epochs{resumed}{summary}")
    return {**report, "mlflow_closed": True, "metrics": json_safe(metrics)}


def run_analysis(
    settings: Settings, db: Database, job: JobInfo, spec: ExperimentSpec
) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    from regcore.pipeline import analyze
    from regcore.spec import AnalysisSpec
    from regcore.train import load_checkpoint

    reporter = ProgressReporter(db, job, settings.heartbeat_interval_s)
    analysis = AnalysisSpec.model_validate(job.payload or {"kind": job.kind})
    with db.session() as session:
        train = session.get(Job, job.depends_on) if job.depends_on else None
        run_id = (train.mlflow_run_id if train is not None else None) or job.experiment_run_id
    if run_id is None:
        raise RuntimeError("the experiment's train job has no MLflow run: nothing to analyse")
    tracker = reopen_run(settings, run_id)
    with db.session() as session:
        jobstore.set_mlflow_run(session, job.id, run_id)
        session.commit()
    reporter.write(0.0, f"{analysis.name}: loading the trained model")

    workdir = settings.runs_dir / job.experiment_id
    model_path, history_path = workdir / "model.pt", workdir / "history.json"
    fetched = workdir / "fetched" / job.id
    if not model_path.exists():  # trained on another machine: take it from MLflow
        try:
            model_path = Path(tracker.download("checkpoints/model.pt", fetched))
            history_path = Path(tracker.download("history.json", fetched))
        except MlflowException as exc:
            raise RuntimeError(f"MLflow run {run_id} has no trained model: {exc}") from None
    try:
        checkpoint = load_checkpoint(model_path)
        history = json.loads(history_path.read_text()) if history_path.exists() else []
        reporter.write(0.0, f"{analysis.name}: running")
        metrics = analyze(
            spec, checkpoint["model"], [analysis], tracker, workdir=workdir, history=history
        )
    finally:
        shutil.rmtree(fetched, ignore_errors=True)
    reporter.write(None, f"{analysis.name}: done")
    return {"mlflow_run_id": run_id, "metrics": json_safe(metrics)}


class RunError(Exception):
    """Carries what the report should still say (the run id) past a failure."""

    def __init__(self, cause: BaseException, report: dict[str, Any]) -> None:
        super().__init__(str(cause))
        self.cause, self.report = cause, report


def run_job(settings: Settings, job_id: str, worker: str | None, stop: StopFlag) -> dict[str, Any]:
    from regcore.spec import ExperimentSpec

    db = Database(settings.job_store_url)
    try:
        job = read_job(db, job_id, worker)
        spec = ExperimentSpec.model_validate(job.spec)
        if job.kind == JobKind.TRAIN:
            return run_train(settings, db, job, spec, stop)
        return run_analysis(settings, db, job, spec)  # a signal stops it at once
    finally:
        db.dispose()


def describe_error(exc: BaseException) -> str:
    from regcore.data import DatasetNotFoundError
    from regcore.train import TrainingDivergedError

    if isinstance(exc, TrainingDivergedError | DatasetNotFoundError | LookupError):
        return str(exc)  # already a sentence for the user
    return f"{type(exc).__name__}: {exc}"


def write_report(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, allow_nan=False, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.child", description=__doc__)
    parser.add_argument("job_id")
    parser.add_argument("--worker", help="the worker holding the job (default: as recorded)")
    parser.add_argument("--result", type=Path, help="write the outcome here as JSON")
    parser.add_argument("--parent-pid", type=int, help="exit if this process is not the parent")
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)
    stop = StopFlag()
    stop.install()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [job %(process)d] %(message)s"
    )

    from regcore.train import TrainingCancelledError

    report: dict[str, Any] = {}
    try:
        report = {"status": "succeeded", **run_job(Settings(), args.job_id, args.worker, stop)}
        code = EXIT_SUCCEEDED
    except BaseException as exc:
        stop.cooperative = True  # a second signal must not interrupt the report
        cause = exc.cause if isinstance(exc, RunError) else exc
        report = exc.report if isinstance(exc, RunError) else {}
        if isinstance(cause, TrainingCancelledError | JobStoppedError | KeyboardInterrupt):
            log.info("stopped: %s", cause)
            report.update(status="cancelled", error=str(cause))
            code = EXIT_CANCELLED
        else:
            traceback.print_exception(cause)
            report.update(status="failed", error=describe_error(cause))
            code = EXIT_FAILED
    stop.cooperative = True
    if args.result is not None:
        write_report(args.result, report)
    logging.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
