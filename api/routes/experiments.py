"""Experiments: submit, read, list, cancel, add analyses; metrics and artifacts from MLflow."""

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Response, status
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api import operations
from api.deps import CeleryDep, ExperimentDep, SessionDep, SettingsDep, TrackingDep, findable
from api.responses import NOT_ENQUEUED, bad_path, conflict, not_found
from api.schemas import (
    AnalysesPublic,
    ArtifactPublic,
    ArtifactsPublic,
    CancelPublic,
    ExperimentPublic,
    ExperimentsPublic,
    ExperimentSummary,
    MetricPointPublic,
    MetricsPublic,
    SubmissionPublic,
)
from api.tracking import ArtifactNotFoundError, remove_download
from regcore.spec import AnalysisSpec, ExperimentSpec

router = APIRouter(prefix="/experiments", tags=["experiments"])

NOT_FOUND = not_found("no such experiment")
StatusFilter = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        status.HTTP_200_OK: {"model": SubmissionPublic, "description": "an identical spec"},
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
    force: Annotated[bool, Query(description="a new experiment even if identical")] = False,
) -> SubmissionPublic:
    """Record a spec and enqueue its train job: 201. An identical spec (same hash) gives
    the existing experiment with 200, unless ``force``."""
    submission = operations.submit(session, celery, tracking, settings, spec, force=force)
    if not submission.created:
        response.status_code = status.HTTP_200_OK
    return SubmissionPublic.of_experiment(
        submission.experiment, settings.mlflow_ui_url, created=submission.created
    )


@router.get("")
def list_experiments(
    session: SessionDep,
    sweep: Annotated[str | None, Query(description="only this sweep's experiments")] = None,
    state: Annotated[
        StatusFilter | None, Query(alias="status", description="only those in this state")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ExperimentsPublic:
    """A page of experiments, newest first; ``count`` is how many match in all."""
    if sweep is not None and not findable(sweep):
        return ExperimentsPublic(data=[], count=0)  # no sweep has that id
    page, count = operations.list_experiments(
        session, sweep=sweep, status=state, limit=limit, offset=offset
    )
    return ExperimentsPublic(data=[ExperimentSummary.of(e) for e in page], count=count)


@router.get("/{experiment_id}", responses=NOT_FOUND)
def read_experiment(experiment: ExperimentDep, settings: SettingsDep) -> ExperimentPublic:
    """The spec, the status, every job's state and progress, the final metrics, the MLflow
    run and its link in the MLflow UI."""
    return ExperimentPublic.of_experiment(experiment, settings.mlflow_ui_url)


@router.post("/{experiment_id}/cancel", responses=NOT_FOUND)
def cancel_experiment(
    experiment: ExperimentDep, session: SessionDep, settings: SettingsDep
) -> CancelPublic:
    """Queued jobs are cancelled now; running ones are asked to stop (their worker sees
    the flag at its next heartbeat). On a finished experiment this changes nothing and
    still answers 200: cancelling is idempotent."""
    changed = operations.cancel(session, experiment)
    return CancelPublic.of_experiment(
        experiment, settings.mlflow_ui_url, cancelled_jobs=[job.id for job in changed]
    )


@router.post(
    "/{experiment_id}/analyses",
    status_code=status.HTTP_201_CREATED,
    responses={
        **NOT_FOUND,
        **conflict("its training failed or was cancelled"),
        **NOT_ENQUEUED,
    },
)
def add_analyses(
    experiment: ExperimentDep,
    analyses: Annotated[list[AnalysisSpec], Body(min_length=1)],
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
) -> AnalysesPublic:
    """Add analysis jobs on the experiment's checkpoint: when its train job succeeded
    they are enqueued now; while it is queued or running they wait for it; a failed or
    cancelled train job gives 409."""
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
        **bad_path(),
        **not_found("no such experiment or artifact"),
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
