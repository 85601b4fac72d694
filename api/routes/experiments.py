"""Experiments: submit, read, list, cancel, add analyses; metrics and artifacts from MLflow."""

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Response, status
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api import operations
from api.deps import (
    CeleryDep,
    ExperimentDep,
    OwnerDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    TrackingDep,
)
from api.responses import NOT_ENQUEUED
from api.schemas import (
    AnalysesPublic,
    ArtifactPublic,
    ArtifactsPublic,
    CancelPublic,
    ErrorPublic,
    ExperimentPublic,
    ExperimentsPublic,
    ExperimentSummary,
    MetricPointPublic,
    MetricsPublic,
    RetryPublic,
    SubmissionPublic,
)
from api.tracking import ArtifactNotFoundError, remove_download
from regcore.spec import MAX_ANALYSES, AnalysisSpec, ExperimentSpec
from service.limits import MAX_OFFSET

router = APIRouter(prefix="/experiments", tags=["experiments"])

NOT_FOUND = {status.HTTP_404_NOT_FOUND: {"model": ErrorPublic, "description": "no such experiment"}}
FORBIDDEN = {
    status.HTTP_403_FORBIDDEN: {
        "model": ErrorPublic,
        "description": "another user's experiment: only its owner or an admin may change it",
    }
}
QUEUE_FULL = {
    status.HTTP_429_TOO_MANY_REQUESTS: {
        "model": ErrorPublic,
        "description": "the submitter's queued and running jobs would pass "
        "REGBENCH_MAX_QUEUED_JOBS_PER_USER; nothing was recorded",
    }
}
ID_PATTERN = r"^[0-9A-Za-z_-]+$"  # ids are hex; nothing a database could choke on (NUL)
StatusFilter = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        status.HTTP_200_OK: {"model": SubmissionPublic, "description": "an identical spec"},
        **QUEUE_FULL,
        **NOT_ENQUEUED,
    },
)
def submit_experiment(
    spec: ExperimentSpec,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    tracking: TrackingDep,
    owner: OwnerDep,
    force: Annotated[bool, Query(description="a new experiment even if identical")] = False,
) -> SubmissionPublic:
    """Record a spec and enqueue its train job: 201; the caller owns it. An identical
    spec (same hash) gives the existing experiment with 200, unless ``force``; it keeps
    its first owner (anyone may read it; only that owner or an admin may cancel it). More
    analyses than ``REGBENCH_MAX_ANALYSES_PER_SPEC`` give 422; 429 when the submitter's
    queued jobs would pass ``REGBENCH_MAX_QUEUED_JOBS_PER_USER``."""
    submission = operations.submit(
        session, celery, tracking, settings, spec, owner=owner, force=force
    )
    if not submission.created:
        response.status_code = status.HTTP_200_OK
    return SubmissionPublic.of_experiment(
        submission.experiment, settings.mlflow_ui_url, created=submission.created
    )


@router.get("")
def list_experiments(
    session: SessionDep,
    sweep: Annotated[
        str | None,
        Query(description="only this sweep's experiments", max_length=64, pattern=ID_PATTERN),
    ] = None,
    state: Annotated[
        StatusFilter | None, Query(alias="status", description="only those in this state")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ExperimentsPublic:
    """A page of experiments, newest first; ``count`` is how many match in all."""
    page, count = operations.list_experiments(
        session, sweep=sweep, status=state, limit=limit, offset=offset
    )
    return ExperimentsPublic(data=[ExperimentSummary.of(e) for e in page], count=count)


@router.get("/{experiment_id}", responses=NOT_FOUND)
def read_experiment(experiment: ExperimentDep, settings: SettingsDep) -> ExperimentPublic:
    """The spec, the status, every job's state and progress, the final metrics, the MLflow
    run and its link in the MLflow UI."""
    return ExperimentPublic.of_experiment(experiment, settings.mlflow_ui_url)


@router.post("/{experiment_id}/cancel", responses={**NOT_FOUND, **FORBIDDEN})
def cancel_experiment(
    experiment: ExperimentDep, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> CancelPublic:
    """Queued jobs are cancelled now; running ones are asked to stop (their worker sees
    the flag at its next heartbeat). On a finished experiment this changes nothing and
    still answers 200: cancelling is idempotent. Only the owner or an admin (403)."""
    operations.require_change(principal, f"experiment {experiment.id}", experiment.owner)
    changed = operations.cancel(session, experiment)
    return CancelPublic.of_experiment(
        experiment, settings.mlflow_ui_url, cancelled_jobs=[job.id for job in changed]
    )


@router.post(
    "/{experiment_id}/analyses",
    status_code=status.HTTP_201_CREATED,
    responses={
        **NOT_FOUND,
        **FORBIDDEN,
        status.HTTP_409_CONFLICT: {"model": ErrorPublic, "description": "training failed"},
        **QUEUE_FULL,
        **NOT_ENQUEUED,
    },
)
def add_analyses(
    experiment: ExperimentDep,
    analyses: Annotated[list[AnalysisSpec], Body(min_length=1, max_length=MAX_ANALYSES)],
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    principal: PrincipalDep,
) -> AnalysesPublic:
    """Add analysis jobs on the experiment's checkpoint: when its train job succeeded
    they are enqueued now; while it is queued or running they wait for it; a failed or
    cancelled train job gives 409. Only the owner or an admin (403). At most
    ``REGBENCH_MAX_ANALYSES_PER_SPEC`` per call (422); 429 when the caller's queued jobs
    would pass their limit."""
    operations.require_change(principal, f"experiment {experiment.id}", experiment.owner)
    jobs = operations.add_analyses(session, celery, settings, experiment, analyses)
    return AnalysesPublic.of_experiment(
        experiment, settings.mlflow_ui_url, added_jobs=[job.id for job in jobs]
    )


@router.get("/{experiment_id}/metrics", responses=NOT_FOUND)
def read_metrics(experiment: ExperimentDep, tracking: TrackingDep) -> MetricsPublic:
    """Every metric of the experiment's MLflow run, per step (epoch): ``{key: [{step,
    value, timestamp}]}``; ``{}`` while no run exists yet."""
    if experiment.mlflow_run_id is None:
        return {}
    histories = tracking.metric_histories(experiment.mlflow_run_id)
    return {
        key: [MetricPointPublic(step=p.step, value=p.value, timestamp=p.timestamp) for p in points]
        for key, points in histories.items()
    }


@router.get("/{experiment_id}/artifacts", responses=NOT_FOUND)
def list_artifacts(experiment: ExperimentDep, tracking: TrackingDep) -> ArtifactsPublic:
    """Every file and directory the run logged (checkpoints, plots, reports), recursively;
    empty while no run exists yet."""
    if experiment.mlflow_run_id is None:
        return ArtifactsPublic(data=[], count=0)
    infos = tracking.list_artifacts(experiment.mlflow_run_id)
    data = [ArtifactPublic(path=i.path, size=i.file_size, is_dir=i.is_dir) for i in infos]
    return ArtifactsPublic(data=data, count=len(data))


@router.get(
    "/{experiment_id}/artifacts/{path:path}",
    response_class=FileResponse,
    responses={
        status.HTTP_200_OK: {"content": {"application/octet-stream": {}}},
        status.HTTP_400_BAD_REQUEST: {"model": ErrorPublic, "description": "a bad path"},
        status.HTTP_404_NOT_FOUND: {"model": ErrorPublic, "description": "no such artifact"},
    },
)
def download_artifact(experiment: ExperimentDep, path: str, tracking: TrackingDep) -> FileResponse:
    """One artifact file of the run. The path is relative to the run's artifacts; ``..``,
    ``.``, a leading ``/`` or backslashes give 400; a directory gives 400."""
    if experiment.mlflow_run_id is None:
        raise ArtifactNotFoundError(f"experiment {experiment.id} has no MLflow run yet")
    fetched = tracking.fetch_file(experiment.mlflow_run_id, path)
    return FileResponse(
        fetched.file,
        filename=fetched.file.name,
        background=BackgroundTask(remove_download, fetched.directory),
    )


@router.post(
    "/{experiment_id}/retry", responses={**NOT_FOUND, **FORBIDDEN, **QUEUE_FULL, **NOT_ENQUEUED}
)
def retry_experiment(
    experiment: ExperimentDep,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    principal: PrincipalDep,
) -> RetryPublic:
    """Put the experiment's failed and cancelled jobs back in the queue (attempts from
    zero; the train job resumes from its last checkpoint, in its MLflow run); succeeded
    jobs are untouched. Nothing to retry: 200 with no job. Only the owner or an admin
    (403); 429 past the owner's ``REGBENCH_MAX_QUEUED_JOBS_PER_USER``."""
    jobs = operations.retry_experiment(session, celery, settings, experiment, principal)
    retried = [job.id for job in jobs]
    session.refresh(experiment)
    return RetryPublic.of_experiment(experiment, settings.mlflow_ui_url, retried_jobs=retried)
