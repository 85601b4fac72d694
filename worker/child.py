"""A job's own process: ``python -m worker.child --serve`` (warm), or ``JOB_ID`` (one job).

Started by ``worker.runner`` in a fresh interpreter, in a session of its own. Warm
(``--serve``), it imports torch, regcore, SQLAlchemy and MLflow once, then runs the jobs
its slot sends on a pipe one after another, keeping its database engine, its MLflow
client and the datasets it loaded (on the device, up to ``runner_dataset_cache_mb``)
between them; each job's output goes to that job's log file. With ``JOB_ID`` it runs that
one job and exits (how one debugs a job). For each job it re-reads the job and its
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
state. MLflow params, metrics and files are buffered and sent in a few calls, all of them
before the job reports.
SIGTERM is a cooperative stop: the training loop finishes its step and stops (the last
epoch's checkpoint is on disk); outside training, or while waiting for a job, it stops
at once. A warm child exits after any job that did not succeed (its slot replaces it).

Exit status (and a job's code on the response pipe): 0 succeeded, 1 failed, 3 stopped
by a signal.
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
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from service import jobstore
from service.db import Database
from service.redact import install_log_redaction, mask_text
from service.settings import Settings
from service.tables import Experiment, Job, JobKind
from worker.supervisor import EXIT_CANCELLED, EXIT_FAILED, EXIT_SUCCEEDED

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from regcore.analysis.base import AnalysisEvent
    from regcore.data import DataSplits
    from regcore.instability import StoredPrediction
    from regcore.spec import ExperimentSpec
    from regcore.train import Callbacks
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
    attempt: int
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
            attempt=job.attempt,
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

    def throttled(self, progress: float, message: str | None = None) -> None:
        if time.monotonic() - self.last_write >= self.min_interval_s:
            self.write(progress, message)

    def analysis(self, event: AnalysisEvent) -> None:
        """An analysis job's progress: its one analysis's fraction and what it does now
        (``pipeline.analyze``'s ``on_progress``); start and end are written at once."""
        message = f"{event.kind}: {event.message}"
        if event.fraction in (0.0, 1.0):
            self.write(event.fraction, message)
        else:
            self.throttled(event.fraction, message)


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


_clients: dict[str, MlflowClient] = {}
_experiment_ids: dict[tuple[str, str], str] = {}


def mlflow_client(settings: Settings) -> MlflowClient:
    """One MLflow client per tracking URI for the life of the process."""
    from mlflow.tracking import MlflowClient

    uri = settings.tracking_uri
    if uri not in _clients:
        _clients[uri] = MlflowClient(uri)
    return _clients[uri]


def mlflow_experiment_id(client: MlflowClient, job: JobInfo, settings: Settings) -> str:
    """The MLflow experiment of a new run: the one made at submit, else the default one
    (created here if missing, once per process; a concurrent creation is fine)."""
    from service.tracking import ensure_experiment

    if job.mlflow_experiment_id:
        return job.mlflow_experiment_id
    name = settings.mlflow_experiment
    key = (settings.tracking_uri, name)
    if key not in _experiment_ids:
        _experiment_ids[key] = ensure_experiment(client, name, settings.default_artifact_location)
    return _experiment_ids[key]


def reopen_run(settings: Settings, run_id: str) -> MlflowTracker:
    from service.tracking import MlflowTracker

    return MlflowTracker.of_run(
        mlflow_client(settings),
        run_id,
        buffered=True,
        spool_root=settings.spool_dir,
        retry_s=settings.tracking_retry_s,
    )


def open_train_run(settings: Settings, db: Database, job: JobInfo) -> tuple[MlflowTracker, bool]:
    """The train job's MLflow run, created once: (tracker, reopened). A first attempt of
    a sweep's job costs one call (create_run); nothing is looked up by name."""
    from regcore.pipeline import environment_tags
    from service.tracking import RUN_KIND_TAG, TRAIN_RUN_KIND, MlflowTracker, train_run_name

    client = mlflow_client(settings)
    run_id = job.mlflow_run_id or job.experiment_run_id
    if run_id is None and job.attempt > 1:
        # A run created by an attempt that died before storing its id carries the job id.
        found = client.search_runs(
            [mlflow_experiment_id(client, job, settings)],
            filter_string=f"tags.`regbench.job_id` = '{job.id}'",
            max_results=1,
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
            RUN_KIND_TAG: TRAIN_RUN_KIND,
            "spec_hash": job.spec_hash,
            **environment_tags(),
        }
        tracker = MlflowTracker(
            settings.tracking_uri,
            settings.mlflow_experiment,
            client=client,
            experiment_id=mlflow_experiment_id(client, job, settings),
            run_name=train_run_name(
                job.configuration or job.experiment_name,
                int(job.spec.get("training", {}).get("seed", 0)),
            ),
            tags=tags,
            confine_to=settings.local_artifact_root,
            buffered=True,
            spool_root=settings.spool_dir,
            retry_s=settings.tracking_retry_s,
        )
        reopened = False
    with db.session() as session:  # stored before training: a redelivery reopens it
        jobstore.set_mlflow_run(session, job.id, tracker.run_id)
        session.commit()
    return tracker, reopened


# --------------------------------------------------------------------------- datasets

_datasets: OrderedDict[str, DataSplits] = OrderedDict()


def load_data(settings: Settings, spec: ExperimentSpec) -> DataSplits:
    """The spec's dataset on its training device, from this process's cache when an
    earlier job loaded it (least recently used ones go past ``runner_dataset_cache_mb``)."""
    from regcore.data import load_dataset
    from regcore.train import resolve_device

    device = resolve_device(spec.training.device)
    key = json.dumps([spec.dataset.model_dump(mode="json"), spec.training.seed, str(device)])
    if key in _datasets:
        _datasets.move_to_end(key)
        return _datasets[key]
    data = load_dataset(spec.dataset, spec.training.seed).to(device)
    budget = settings.runner_dataset_cache_mb * 2**20
    size = dataset_bytes(data)
    if size <= budget:
        while _datasets and sum(map(dataset_bytes, _datasets.values())) + size > budget:
            _datasets.popitem(last=False)
        _datasets[key] = data
    return data


def dataset_bytes(data: DataSplits) -> int:
    splits = [data.train, data.test] + ([data.val] if data.val is not None else [])
    return sum(t.nelement() * t.element_size() for split in splits for t in (split.x, split.y))


def backfill_epochs(tracker: MlflowTracker, history: list[dict[str, float]]) -> None:
    """Log checkpointed epochs the killed attempt had no time to log (it dies between
    saving ``last.pt`` and logging that epoch at worst); never log an epoch twice."""
    logged = {metric.step for metric in tracker.client.get_metric_history(tracker.run_id, "lr")}
    logged |= tracker.pending_steps("lr")  # spooled by the killed attempt, not yet delivered
    for row in history:
        epoch = int(row["epoch"])
        if epoch not in logged:
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)


# --------------------------------------------------------------------------- the jobs


def json_safe(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers JSON (and PostgreSQL's json) can hold: nan and inf become None."""
    from regcore.analysis.base import as_json_value

    return {key: as_json_value(value) for key, value in metrics.items()}


@dataclass
class TrainMember:
    """One train job, opened: its MLflow run (created or reopened), its progress, its
    working directory and data; ``resumed`` says from which epoch, for messages."""

    job: JobInfo
    spec: ExperimentSpec
    tracker: MlflowTracker
    reporter: ProgressReporter
    workdir: Path
    data: DataSplits
    resumed: str

    @property
    def train_spec(self) -> ExperimentSpec:
        """Analyses are jobs of their own; the run keeps the experiment's spec hash."""
        return self.spec.model_copy(update={"analyses": []})

    def pinned_tracker(self) -> PinnedSpecHashTracker:
        return PinnedSpecHashTracker(self.tracker, self.job.spec_hash)

    def callbacks(self, stop: StopFlag) -> Callbacks:
        from regcore.train import Callbacks

        epochs, reporter, resumed = self.spec.training.epochs, self.reporter, self.resumed

        def on_step(epoch: int, step: int, steps: int) -> None:
            reporter.throttled((epoch - 1 + step / steps) / epochs)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            shown = [
                f"loss {metrics['train/loss']:.4g}",
                f"accuracy {metrics['train/accuracy']:.3f}",
            ]
            if "val/accuracy" in metrics:
                shown.append(f"val accuracy {metrics['val/accuracy']:.3f}")
            reporter.write(epoch / epochs, f"epoch {epoch}/{epochs}: {', '.join(shown)}{resumed}")

        return Callbacks(on_step, on_epoch, stop.should_cancel)

    def succeeded(self, metrics: Mapping[str, Any], note: str = "") -> dict[str, Any]:
        """Close the run; the report of a finished training."""
        self.tracker.finish("FINISHED")
        metrics = {**metrics, "spec_hash": self.job.spec_hash}
        accuracy = metrics.get("test_accuracy")
        summary = f"; test accuracy {accuracy:.4f}" if isinstance(accuracy, float) else ""
        epochs = metrics.get("epochs", self.spec.training.epochs)
        self.reporter.write(None, f"trained {epochs} epochs{self.resumed}{note}{summary}")
        return {
            "mlflow_run_id": self.tracker.run_id,
            "mlflow_closed": True,
            "metrics": json_safe(metrics),
        }

    def failed(self) -> dict[str, Any]:
        """Mark the run FAILED (a cancel is marked KILLED by the supervisor)."""
        report: dict[str, Any] = {"mlflow_run_id": self.tracker.run_id}
        try:
            self.tracker.finish("FAILED")
            report["mlflow_closed"] = True
        except Exception as close_error:  # the job's error matters more
            log.warning("could not mark the MLflow run FAILED: %s", close_error)
        return report


def open_member(
    settings: Settings, db: Database, job: JobInfo, spec: ExperimentSpec
) -> TrainMember:
    """Data (before MLflow: no empty runs), the MLflow run, and the epoch it resumes from:
    a redelivered job's checkpointed epochs that its MLflow run lacks are logged now."""
    from regcore.train import load_checkpoint

    reporter = ProgressReporter(db, job, settings.heartbeat_interval_s)
    workdir = settings.run_workdir(job.experiment_id)
    data = load_data(settings, spec)
    tracker, reopened = open_train_run(settings, db, job)
    resumed_from = 0
    last = workdir / "last.pt"
    if last.exists():
        checkpoint = load_checkpoint(last)
        resumed_from = int(checkpoint["epoch"])
        if reopened:
            backfill_epochs(tracker, list(checkpoint["history"]))
        del checkpoint
        tracker.set_tags({"regbench.resumed_from_epoch": str(resumed_from)})
        log.info("job %s resumes from the checkpoint of epoch %d", job.id, resumed_from)
    resumed = f" (resumed from epoch {resumed_from})" if resumed_from else ""
    epochs = spec.training.epochs
    first = min(resumed_from + 1, epochs)
    reporter.write(
        min(resumed_from / epochs, 1.0), f"training from epoch {first}/{epochs}{resumed}"
    )
    return TrainMember(job, spec, tracker, reporter, workdir, data, resumed)


def run_train(
    settings: Settings, db: Database, job: JobInfo, spec: ExperimentSpec, stop: StopFlag
) -> dict[str, Any]:
    from regcore.pipeline import run as run_pipeline
    from regcore.train import TrainingCancelledError

    member = open_member(settings, db, job, spec)
    try:
        with stop.cooperatively():
            result = run_pipeline(
                member.train_spec,
                member.pinned_tracker(),
                workdir=member.workdir,
                data=member.data,
                callbacks=member.callbacks(stop),
            )
    except BaseException as exc:
        cancelled = isinstance(exc, TrainingCancelledError | JobStoppedError)
        report = {"mlflow_run_id": member.tracker.run_id} if cancelled else member.failed()
        raise RunError(exc, report) from exc
    record_predictions(db, job, result.predictions)
    return member.succeeded(result.metrics)


def record_predictions(db: Database, job: JobInfo, predictions: StoredPrediction | None) -> None:
    """The experiment's final test labels into the job store (instability across seeds).
    Informative like progress: a failed write leaves the experiment out of its
    configuration's instability (the results say how many members it used), never fails
    the training that succeeded."""
    if predictions is None:
        return
    try:
        with db.session() as session:
            jobstore.store_predictions(session, job.experiment_id, predictions)
            session.commit()
    except SQLAlchemyError as exc:
        log.warning("test predictions of experiment %s not recorded: %s", job.experiment_id, exc)


def run_stack(
    settings: Settings, db: Database, job_ids: list[str], worker: str | None, stop: StopFlag
) -> list[dict[str, Any]]:
    """Train jobs whose experiments share a stack key as one stacked model
    (``regcore.pipeline.run_stacked``): each keeps its own MLflow run, checkpoint,
    progress and report. Returns one report per job, in order.

    A cancel (or a signal) stops them all: each report says ``cancelled`` and the
    supervisor decides which one was cancelled and which go back to the queue. A member
    whose loss diverged fails with the reason; every other failure of the stack is
    ``stack_failed``: those members go back to the queue to train on their own."""
    from regcore.pipeline import run_stacked
    from regcore.spec import ExperimentSpec
    from regcore.train import TrainingCancelledError, TrainingDivergedError

    jobs = [read_job(db, job_id, worker) for job_id in job_ids]
    specs = [ExperimentSpec.from_stored(job.spec) for job in jobs]
    for spec in specs:
        check_device(spec)
    members = [open_member(settings, db, job, spec) for job, spec in zip(jobs, specs, strict=True)]
    seeds = ", ".join(str(spec.training.seed) for spec in specs)
    log.info("training %d jobs stacked (seeds %s): %s", len(jobs), seeds, " ".join(job_ids))
    try:
        with stop.cooperatively():
            results = run_stacked(
                [member.train_spec for member in members],
                [member.pinned_tracker() for member in members],
                workdirs=[member.workdir for member in members],
                datas=[member.data for member in members],
                callbacks=[member.callbacks(stop) for member in members],
            )
    except BaseException as exc:
        stop.cooperative = True
        if isinstance(exc, TrainingCancelledError | JobStoppedError | KeyboardInterrupt):
            log.info("stack stopped: %s", exc)
            return [
                {"status": "cancelled", "error": str(exc), "mlflow_run_id": m.tracker.run_id}
                for m in members
            ]
        print_exception(exc)
        diverged = getattr(exc, "member", None) if isinstance(exc, TrainingDivergedError) else None
        reports = []
        for index, member in enumerate(members):
            if index == diverged:
                reports.append({**member.failed(), "status": "failed", "error": str(exc)})
            else:  # its run stays open: the job trains again, on its own, into it
                reports.append(
                    {
                        "status": "failed",
                        "stack_failed": True,
                        "error": f"the stack it trained in failed: {describe_error(exc)}",
                        "mlflow_run_id": member.tracker.run_id,
                    }
                )
        return reports
    note = f" (stacked with {len(members) - 1} more)"
    for member, result in zip(members, results, strict=True):
        record_predictions(db, member.job, result.predictions)
    return [
        {"status": "succeeded", **member.succeeded(result.metrics, note)}
        for member, result in zip(members, results, strict=True)
    ]


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

    workdir = settings.run_workdir(job.experiment_id)
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
            spec,
            checkpoint["model"],
            [analysis],
            tracker,
            workdir=workdir,
            history=history,
            data=load_data(settings, spec),
            on_progress=reporter.analysis,
        )
        tracker.deliver_all()  # every metric is in MLflow before the job is recorded
    finally:
        shutil.rmtree(fetched, ignore_errors=True)
    reporter.write(None, f"{analysis.name}: done")
    return {"mlflow_run_id": run_id, "metrics": json_safe(metrics)}


class RunError(Exception):
    """Carries what the report should still say (the run id) past a failure."""

    def __init__(self, cause: BaseException, report: dict[str, Any]) -> None:
        super().__init__(str(cause))
        self.cause, self.report = cause, report


def run_job(
    settings: Settings, db: Database, job_id: str, worker: str | None, stop: StopFlag
) -> dict[str, Any]:
    from regcore.spec import ExperimentSpec

    job = read_job(db, job_id, worker)
    spec = ExperimentSpec.from_stored(job.spec)
    check_device(spec)
    if job.kind == JobKind.TRAIN:
        return run_train(settings, db, job, spec, stop)
    return run_analysis(settings, db, job, spec)  # a signal stops it at once


def check_device(spec: ExperimentSpec) -> None:
    """A worker pinned to a GPU never trains on the CPU behind the user's back."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    wants_gpu = spec.training.device.startswith("cuda") or (
        spec.training.device == "auto" and visible not in ("", "-1")
    )
    if wants_gpu and not torch.cuda.is_available():
        where = f"GPU {visible} (CUDA_VISIBLE_DEVICES)" if visible else "a GPU"
        raise RuntimeError(
            f"this job needs {where} but torch sees no CUDA device here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
            "check the node's driver and the worker's --gpus"
        )


def print_exception(exc: BaseException) -> None:
    """The traceback to the job's log, with URI passwords and configured secrets masked
    (an MLflow or store error quotes the URI it failed on)."""
    text = "".join(traceback.format_exception(exc))
    sys.stderr.write(mask_text(text, Settings().secrets))
    sys.stderr.flush()


def describe_error(exc: BaseException) -> str:
    from regcore.data import DatasetNotFoundError
    from regcore.train import TrainingDivergedError

    if isinstance(exc, TrainingDivergedError | DatasetNotFoundError | LookupError):
        return str(exc)  # already a sentence for the user
    # Recorded on the job and shown by the API: an MLflow or store error may quote a URI.
    return mask_text(f"{type(exc).__name__}: {exc}", Settings().secrets)


def write_report(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, allow_nan=False, default=str))
    os.replace(tmp, path)


def run_one(
    settings: Settings,
    db: Database,
    job_id: str,
    worker: str | None,
    result: Path | None,
    stop: StopFlag,
) -> int:
    """Run one job, write its report; returns the exit code that says how it ended. A
    signal stops the job at once outside training (cooperatively inside it); once the
    job has ended it can no longer interrupt the report."""
    from regcore.train import TrainingCancelledError

    stop.requested, stop.cooperative = False, False
    log.info("running job %s", job_id)
    report: dict[str, Any] = {}
    try:
        report = {"status": "succeeded", **run_job(settings, db, job_id, worker, stop)}
        stop.cooperative = True
        code = EXIT_SUCCEEDED
    except BaseException as exc:
        stop.cooperative = True
        cause = exc.cause if isinstance(exc, RunError) else exc
        report = exc.report if isinstance(exc, RunError) else {}
        if isinstance(cause, TrainingCancelledError | JobStoppedError | KeyboardInterrupt):
            log.info("stopped: %s", cause)
            report.update(status="cancelled", error=str(cause))
            code = EXIT_CANCELLED
        else:
            print_exception(cause)
            report.update(status="failed", error=describe_error(cause))
            code = EXIT_FAILED
    if result is not None:
        write_report(result, report)
    return code


def run_stack_one(
    settings: Settings,
    db: Database,
    job_ids: list[str],
    worker: str | None,
    results: list[Path],
    stop: StopFlag,
) -> int:
    """``run_one`` for a stack: one report per job; the exit code is 0 when every job
    succeeded, 3 when the stack was stopped, else 1."""
    stop.requested, stop.cooperative = False, False
    log.info("running jobs %s stacked", " ".join(job_ids))
    try:
        reports = run_stack(settings, db, job_ids, worker, stop)
    except BaseException as exc:  # before training: no member got anywhere
        stop.cooperative = True
        print_exception(exc)
        failed = {"status": "failed", "stack_failed": True, "error": describe_error(exc)}
        reports = [dict(failed) for _ in job_ids]
    stop.cooperative = True
    for path, report in zip(results, reports, strict=True):
        write_report(path, report)
    statuses = {report["status"] for report in reports}
    if statuses == {"succeeded"}:
        return EXIT_SUCCEEDED
    return EXIT_CANCELLED if statuses == {"cancelled"} else EXIT_FAILED


def warm_up(settings: Settings) -> None:
    """Pay the start-up costs once, before the first job: imports of torch, every
    regcore component and MLflow; the first optimizer (it pulls in torch._dynamo); the
    MLflow store (a local one creates or checks its schema here)."""
    import torch

    import regcore.pipeline  # noqa: F401  (the loop, the analyses, the registries)
    from regcore.registries import ANALYSES, ATTACKS, DATASETS, MODELS, REGULARIZERS

    threads = int(os.environ.get("REGBENCH_TORCH_THREADS") or 0)
    if threads:
        torch.set_num_threads(threads)
    for registry in (DATASETS, MODELS, REGULARIZERS, ANALYSES, ATTACKS):
        registry.names()  # imports every component module
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    weight.sum().backward()
    optimizer.step()
    try:
        mlflow_client(settings).search_experiments(max_results=1)
    except Exception as exc:  # the first job will say what is wrong
        log.warning("MLflow not reachable while warming up: %s", exc)


@contextmanager
def job_output(path: Path | None) -> Iterator[None]:
    """Point this process's stdout and stderr at the job's log while it runs."""
    if path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in zip((1, 2), saved, strict=True):
            os.dup2(original, fd)
            os.close(original)


def serve(requests_fd: int, responses_fd: int, stop: StopFlag) -> int:
    """Warm up, then run the jobs the slot sends until it closes the pipe, a job does not
    succeed, or a signal arrives while waiting."""
    settings = Settings()
    responses = os.fdopen(responses_fd, "w", buffering=1)
    requests = os.fdopen(requests_fd, "r")

    def answer(message: dict[str, Any]) -> None:
        responses.write(json.dumps(message) + "\n")

    started = time.monotonic()
    warm_up(settings)
    log.info("warm in %.1f s", time.monotonic() - started)
    answer({"ready": True, "pid": os.getpid()})
    db = Database(settings.job_store_url)
    try:
        while True:
            stop.cooperative = False  # a signal while waiting ends the child at once
            try:
                line = requests.readline()
            except JobStoppedError:  # SIGTERM while idle: the worker is shutting down
                return EXIT_CANCELLED
            finally:
                stop.cooperative = True
            if not line:
                return EXIT_SUCCEEDED
            request = json.loads(line)
            log_path = Path(request["log"]) if request.get("log") else None
            with job_output(log_path):
                if "job_ids" in request:  # a stack: several train jobs as one model
                    results = [Path(path) for path in request["results"]]
                    worker = request.get("worker")
                    code = run_stack_one(settings, db, request["job_ids"], worker, results, stop)
                else:
                    result = Path(request["result"]) if request.get("result") else None
                    worker = request.get("worker")
                    code = run_one(settings, db, request["job_id"], worker, result, stop)
            answer({"job_id": request.get("job_id") or request["job_ids"][0], "code": code})
            if code != EXIT_SUCCEEDED:
                return code
    finally:
        db.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.child", description=__doc__)
    parser.add_argument("job_id", nargs="?", help="run this one job and exit")
    parser.add_argument("--serve", action="store_true", help="warm: run jobs sent on a pipe")
    parser.add_argument("--requests", type=int, help="--serve: file descriptor to read jobs")
    parser.add_argument("--responses", type=int, help="--serve: file descriptor to answer")
    parser.add_argument("--worker", help="the worker holding the job (default: as recorded)")
    parser.add_argument("--result", type=Path, help="write the outcome here as JSON")
    parser.add_argument("--parent-pid", type=int, help="exit if this process is not the parent")
    args = parser.parse_args(argv)
    if args.serve == (args.job_id is not None):
        parser.error("give either JOB_ID or --serve")
    if args.serve and (args.requests is None or args.responses is None):
        parser.error("--serve needs --requests and --responses")
    die_with_parent(args.parent_pid)
    stop = StopFlag()
    stop.install()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [job %(process)d] %(message)s"
    )
    install_log_redaction(Settings().secrets)
    if args.serve:
        code = serve(args.requests, args.responses, stop)
    else:
        settings = Settings()
        db = Database(settings.job_store_url)
        try:
            code = run_one(settings, db, args.job_id, args.worker, args.result, stop)
        finally:
            db.dispose()
    stop.cooperative = True
    logging.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
