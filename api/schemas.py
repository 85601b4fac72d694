"""What the API sends back: one shape per answer, apart from the tables.

Requests need no shapes of their own: a submission's body is ``regcore.spec.ExperimentSpec``
and an analyses body is ``list[regcore.spec.AnalysisSpec]``, so the client, the API and
the workers read specs with the same code. Times are UTC (SQLite hands them back naive).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict

from service import jobstore
from service.tables import Experiment, Job, Worker


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


def age_seconds(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round((now - _utc(moment)).total_seconds(), 3)


class ErrorPublic(BaseModel):
    detail: str


class NotEnqueuedPublic(ErrorPublic):
    """503: the work is recorded (queued in the job store) but the broker did not take it."""

    experiment_id: str | None = None
    sweep_id: str | None = None
    job_ids: list[str]


# --------------------------------------------------------------------------- experiments


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    state: str
    queue: str
    attempt: int
    progress: float
    message: str | None
    error: str | None
    device: str | None
    worker: str | None
    depends_on: str | None
    payload: dict[str, Any] | None
    cancel_requested: bool
    mlflow_run_id: str | None
    created_at: UtcDatetime
    enqueued_at: UtcDatetime | None
    started_at: UtcDatetime | None
    heartbeat_at: UtcDatetime | None
    finished_at: UtcDatetime | None


class ExperimentSummary(BaseModel):
    id: str
    name: str
    owner: str
    status: str
    sweep_id: str | None
    configuration: str | None
    spec_hash: str
    mlflow_run_id: str | None
    created_at: UtcDatetime

    @classmethod
    def of(cls, experiment: Experiment) -> ExperimentSummary:
        return cls(**_summary_fields(experiment))


class ExperimentPublic(ExperimentSummary):
    spec: dict[str, Any]
    jobs: list[JobPublic]
    metrics: dict[str, Any] | None
    mlflow_experiment_id: str | None
    mlflow_url: str | None  # the run in the MLflow UI, when its address is configured

    @classmethod
    def of_experiment(cls, experiment: Experiment, mlflow_ui_url: str | None, **extra: Any) -> Self:
        """``extra``: the fields a subclass adds (created, cancelled_jobs, added_jobs)."""
        return cls(
            **_summary_fields(experiment),
            spec=experiment.spec,
            jobs=[JobPublic.model_validate(job) for job in experiment.jobs],
            metrics=experiment.metrics,
            mlflow_experiment_id=experiment.mlflow_experiment_id,
            mlflow_url=mlflow_run_url(mlflow_ui_url, experiment),
            **extra,
        )


class SubmissionPublic(ExperimentPublic):
    created: bool  # False: an identical spec was already submitted; this is that one


class CancelPublic(ExperimentPublic):
    cancelled_jobs: list[str]  # cancelled now (queued) or asked to stop (running)


class AnalysesPublic(ExperimentPublic):
    added_jobs: list[str]


class ExperimentsPublic(BaseModel):
    data: list[ExperimentSummary]
    count: int  # all that match the filters, not just this page


def _summary_fields(experiment: Experiment) -> dict[str, Any]:
    return {
        "id": experiment.id,
        "name": experiment.name,
        "owner": experiment.owner,
        "status": jobstore.experiment_status(experiment),
        "sweep_id": experiment.sweep_id,
        "configuration": experiment.configuration,
        "spec_hash": experiment.spec_hash,
        "mlflow_run_id": experiment.mlflow_run_id,
        "created_at": experiment.created_at,
    }


def mlflow_run_url(ui_url: str | None, experiment: Experiment) -> str | None:
    if not (ui_url and experiment.mlflow_experiment_id and experiment.mlflow_run_id):
        return None
    return (
        f"{ui_url.rstrip('/')}/#/experiments/{experiment.mlflow_experiment_id}"
        f"/runs/{experiment.mlflow_run_id}"
    )


# --------------------------------------------------------------------------- MLflow data


class MetricPointPublic(BaseModel):
    step: int
    value: float | None  # null for NaN or infinity
    timestamp: int


MetricsPublic = dict[str, list[MetricPointPublic]]


class ArtifactPublic(BaseModel):
    path: str
    size: int | None
    is_dir: bool


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int


# --------------------------------------------------------------------------- queue


class RunningJobPublic(BaseModel):
    job_id: str
    experiment_id: str
    kind: str
    queue: str
    attempt: int
    progress: float
    message: str | None
    device: str | None
    worker: str | None
    cancel_requested: bool
    started_at: UtcDatetime | None
    heartbeat_at: UtcDatetime | None
    heartbeat_age_s: float | None

    @classmethod
    def of(cls, job: Job, now: datetime) -> RunningJobPublic:
        return cls(
            job_id=job.id,
            experiment_id=job.experiment_id,
            kind=job.kind,
            queue=job.queue,
            attempt=job.attempt,
            progress=job.progress,
            message=job.message,
            device=job.device,
            worker=job.worker,
            cancel_requested=job.cancel_requested,
            started_at=job.started_at,
            heartbeat_at=job.heartbeat_at,
            heartbeat_age_s=age_seconds(job.heartbeat_at, now),
        )


class SlotJobPublic(BaseModel):
    """What one of a worker's slots runs now."""

    slot: str  # the job's worker: "<node>:<pool process>"
    job_id: str
    experiment_id: str
    kind: str
    progress: float


class WorkerPublic(BaseModel):
    name: str
    hostname: str
    queues: list[str]
    device: str | None
    slots: int  # jobs it runs at once, each in a warm job process of its own
    busy: list[SlotJobPublic]  # its slots that run a job, and the job
    started_at: UtcDatetime
    heartbeat_at: UtcDatetime
    heartbeat_age_s: float | None

    @classmethod
    def of(cls, worker: Worker, now: datetime, running: Sequence[Job] = ()) -> WorkerPublic:
        """``running``: running jobs; those held by this worker's slots are listed."""
        busy = [
            SlotJobPublic(
                slot=job.worker,
                job_id=job.id,
                experiment_id=job.experiment_id,
                kind=job.kind,
                progress=job.progress,
            )
            for job in running
            if job.worker is not None and job.worker.rsplit(":", 1)[0] == worker.name
        ]
        return cls(
            name=worker.name,
            hostname=worker.hostname,
            queues=[queue for queue in worker.queues.split(",") if queue],
            device=worker.device,
            slots=worker.slots,
            busy=busy,
            started_at=worker.started_at,
            heartbeat_at=worker.heartbeat_at,
            heartbeat_age_s=age_seconds(worker.heartbeat_at, now),
        )


class QueuePublic(BaseModel):
    by_state: dict[str, int]  # every job in the store, by state
    by_queue: dict[str, dict[str, int]]  # queue -> state -> jobs
    running: list[RunningJobPublic]
    workers: list[WorkerPublic]  # those whose heartbeat is recent


class WhoamiPublic(BaseModel):
    name: str  # the owner of what this caller submits
    admin: bool  # may change anyone's work
    authenticated: bool  # false: a read without a token, while reads are open


# --------------------------------------------------------------------------- sweeps


class SweepPointPublic(BaseModel):
    id: str  # the experiment
    configuration: str
    seed: int
    created: bool  # False: an identical spec was already in the job store


class SweepSubmissionPublic(BaseModel):
    id: str
    name: str
    owner: str  # who submitted the sweep (its reused experiments keep their own owners)
    created: bool  # False: the same sweep was submitted before; this is that one
    size: int  # distinct experiments in the sweep
    new_experiments: int  # experiments recorded (and enqueued) by this request
    experiments: list[SweepPointPublic]


class SweepRunningJobPublic(BaseModel):
    job_id: str
    experiment_id: str
    configuration: str
    seed: int
    kind: str
    progress: float
    message: str | None
    device: str | None
    worker: str | None
    cancel_requested: bool
    heartbeat_age_s: float | None


class ReportPublic(BaseModel):
    status: Literal["none", "building", "done", "failed"]
    mlflow_run_id: str | None
    error: str | None
    files: list[str]  # GET .../report/{file} downloads one


class SweepPublic(BaseModel):
    id: str
    name: str
    owner: str
    created_at: UtcDatetime
    size: int
    status: str  # queued, running, succeeded, failed (any failed) or cancelled
    experiments: dict[str, int]  # experiment state -> count
    jobs: dict[str, int]  # job state -> count
    progress: float  # 0..1, each job weighted by the expected duration of its kind
    eta_s: float | None  # remaining expected work over the live workers; null: unknown yet
    eta_estimated: bool = False  # some remaining job kind never finished: its time is guessed
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    running: list[SweepRunningJobPublic]
    report: ReportPublic
    mlflow_experiment_id: str | None


class SweepCancelPublic(SweepPublic):
    cancelled_jobs: list[str]
    kept_experiments: list[str]  # shared with another owner's work: not cancelled


class SweepsPublic(BaseModel):
    data: list[SweepPublic]
    count: int


class SummaryPublic(BaseModel):
    mean: float | None
    std: float | None  # sample standard deviation over seeds; 0 for one run
    n: int  # experiments that have the metric


class DifferencePublic(BaseModel):
    """A configuration's metric against the baseline row's (``regcore.significance``)."""

    diff: float | None  # mean(row) - mean(baseline)
    ci_low: float | None  # its 95% confidence interval
    ci_high: float | None
    p: float | None  # two-sided p-value; null when no test is possible (see note)
    p_holm: float | None  # Holm-corrected over the rows compared on this metric
    test: Literal["welch", "paired"] | None  # paired: both rows trained on the same seeds
    significant: bool | None  # p_holm < 0.05; null without a test
    n: int
    n_baseline: int
    note: str | None = None  # why no test: "n=1: no test possible", "no variance", ...


class InstabilityPublic(BaseModel):
    """Which members the configuration's ``instability/*`` metrics were computed over."""

    members: int  # members with predictions on one shared test set
    left_out: dict[str, str] = {}  # experiment id -> why it was left out


class ResultRowPublic(BaseModel):
    configuration: str
    experiments: int
    succeeded: int
    metrics: dict[str, SummaryPublic]
    versus_baseline: dict[str, DifferencePublic] = {}  # empty for the baseline row
    instability: InstabilityPublic | None = None  # null: fewer than two members


class SweepResultsPublic(BaseModel):
    sweep_id: str
    metrics: list[str]  # the columns, in reading order
    rows: list[ResultRowPublic]
    baseline: str | None = None  # the configuration every other row is compared with


# --------------------------------------------------------------------------- catalog, health


class StackingPublic(BaseModel):
    stackable: bool  # the seeds of a spec using it may train together (regcore.stacked)
    note: str  # why not, or what stacking costs


class CatalogEntryPublic(BaseModel):
    name: str
    summary: str
    params: dict[str, Any]  # the component's params as JSON schema
    stacking: StackingPublic | None = None  # regularizers only


CatalogPublic = dict[str, list[CatalogEntryPublic]]


class ComponentHealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None
    seconds: float


class HealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    components: dict[str, ComponentHealthPublic]  # database, broker, tracking
