"""Sweeps: submit a grid, follow it, read its comparison, cancel it, fetch its report."""

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import FileResponse, PlainTextResponse
from starlette.background import BackgroundTask

from api import operations
from api.deps import (
    CeleryDep,
    DatabaseDep,
    OwnerDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    SweepDep,
    SweepRowDep,
    TrackingDep,
)
from api.responses import NOT_ENQUEUED
from api.routes.experiments import QUEUE_FULL
from api.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    ErrorPublic,
    SweepCancelPublic,
    SweepPointPublic,
    SweepPublic,
    SweepResultsPublic,
    SweepsPublic,
    SweepSubmissionPublic,
)
from api.tracking import remove_download
from regcore.significance import UnknownBaselineError
from regcore.spec import SweepSpec
from service import sweeps
from service.limits import MAX_OFFSET

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

NOT_FOUND = {status.HTTP_404_NOT_FOUND: {"model": ErrorPublic, "description": "no such sweep"}}
FORBIDDEN = {
    status.HTTP_403_FORBIDDEN: {
        "model": ErrorPublic,
        "description": "another user's sweep: only its owner or an admin may change it",
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        status.HTTP_200_OK: {"model": SweepSubmissionPublic, "description": "the same sweep"},
        **QUEUE_FULL,
        **NOT_ENQUEUED,
    },
)
def submit_sweep(
    document: SweepSpec,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    tracking: TrackingDep,
    owner: OwnerDep,
    force: Annotated[bool, Query(description="new experiments even for known specs")] = False,
) -> SweepSubmissionPublic:
    """Expand ``grid`` over ``base`` (a cartesian product over dotted paths) and record one
    experiment per point: 201. Specs already in the job store are reused, not run again;
    the same sweep submitted again answers 200 and adds nothing (but the points a partial
    sweep lacks, left by an older version, which it records and enqueues). A grid past
    ``REGBENCH_MAX_SWEEP_SIZE`` points or ``REGBENCH_MAX_JOBS_PER_REQUEST`` jobs (points
    times each point's train job and analyses), a point with more than
    ``REGBENCH_MAX_ANALYSES_PER_SPEC`` analyses, or an invalid point gives 422 and records
    nothing; each error's ``loc`` points into the body (``grid``/``base``). 429 when the
    new experiments' jobs would take the submitter past
    ``REGBENCH_MAX_QUEUED_JOBS_PER_USER`` queued or running jobs.

    The caller owns the sweep, and the experiments it records; those it reuses keep
    their first owner. The same grid from another user is another sweep."""
    submission = operations.submit_sweep(
        session, celery, tracking, settings, document, owner=owner, force=force
    )
    if not submission.created:
        response.status_code = status.HTTP_200_OK
    sweep = submission.sweep
    new = {experiment.id for experiment in submission.new_experiments}
    return SweepSubmissionPublic(
        id=sweep.id,
        name=sweep.name,
        owner=sweep.owner,
        created=submission.created,
        size=sweep.size,
        new_experiments=len(new),
        experiments=[
            SweepPointPublic(
                id=m.experiment_id,
                configuration=m.configuration,
                seed=m.seed,
                created=m.experiment_id in new,
            )
            for m in submission.members
        ],
    )


@router.get("")
def list_sweeps(
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> SweepsPublic:
    """A page of sweeps, newest first, each with its progress."""
    page, count = sweeps.list_sweeps(session, limit=limit, offset=offset)
    return SweepsPublic(data=operations.describe_sweeps(session, settings, page), count=count)


@router.get("/{sweep_id}", responses=NOT_FOUND)
def read_sweep(sweep: SweepRowDep, session: SessionDep, settings: SettingsDep) -> SweepPublic:
    """Experiments and jobs counted by state, weighted progress, an ETA (null until a job
    of each remaining kind has finished once), the running jobs, the report's state."""
    return operations.describe_sweep(session, settings, sweep)


@router.post("/{sweep_id}/cancel", responses={**NOT_FOUND, **FORBIDDEN})
def cancel_sweep(
    sweep: SweepDep, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> SweepCancelPublic:
    """Cancel the sweep's experiments: queued jobs now, running ones at their next
    heartbeat. Idempotent. Only the sweep's owner or an admin (403); an experiment the
    sweep shares with another user's submission (its owner) is left alone unless the
    caller is an admin, and listed in ``kept_experiments``."""
    changed, kept = operations.cancel_sweep(session, sweep, principal)
    described = operations.describe_sweep(session, settings, sweep)
    return SweepCancelPublic(
        **described.model_dump(),
        cancelled_jobs=[job.id for job in changed],
        kept_experiments=kept,
    )


@router.get(
    "/{sweep_id}/results",
    response_model=SweepResultsPublic,
    responses={
        **NOT_FOUND,
        status.HTTP_200_OK: {"content": {"application/json": {}, "text/csv": {}}},
    },
)
def read_results(
    sweep: SweepDep,
    output: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
    baseline: Annotated[
        str | None,
        Query(
            max_length=2000,
            description="the row the others are compared with: a configuration, or a row's "
            "index from 0; default the first",
        ),
    ] = None,
) -> Response:
    """One row per configuration, in grid order: mean, std and n over its experiments
    (seeds) of test accuracy, robust accuracy at every attacked eps, boundary total
    variation and distance (with the fraction of planes where a boundary was found),
    curvature, training time; the instability of its predictions
    across seeds (``instability/*``, from two members up). Each row against the
    ``baseline`` row, per metric: the difference of means, its 95% CI and a p-value (a
    paired t-test when both rows used the same seeds, else Welch's), Holm-corrected over
    the rows compared; a row of one run says no test is possible. A ``baseline`` that
    names no configuration or row gives 422 with the choices. ``format=csv`` for a CSV
    file."""
    try:
        if output == "csv":
            text = sweeps.results_csv(sweeps.results(sweep, baseline))
            return PlainTextResponse(
                text,
                media_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="sweep-{sweep.id}.csv"'},
            )
        results = operations.sweep_results(sweep, baseline)
    except UnknownBaselineError as exc:
        error = {
            "loc": ["query", "baseline"],
            "msg": str(exc),
            "type": "unknown_baseline",
            "input": baseline,
            "ctx": {"choices": exc.choices},
        }
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [error]) from None
    return Response(results.model_dump_json(), media_type="application/json")


@router.get("/{sweep_id}/report", responses=NOT_FOUND)
def list_report(sweep: SweepDep, tracking: TrackingDep) -> ArtifactsPublic:
    """The report's files (report.png, report.html, results.csv, results.json); 404 with
    the reason until the sweep has finished and its report is logged."""
    infos = tracking.list_artifacts(operations.report_run(sweep))
    data = [ArtifactPublic(path=i.path, size=i.file_size, is_dir=i.is_dir) for i in infos]
    return ArtifactsPublic(data=data, count=len(data))


@router.post(
    "/{sweep_id}/report",
    responses={
        **NOT_FOUND,
        **FORBIDDEN,
        status.HTTP_409_CONFLICT: {"model": ErrorPublic, "description": "unfinished jobs"},
    },
)
def build_report(
    sweep: SweepDep,
    session: SessionDep,
    settings: SettingsDep,
    database: DatabaseDep,
    principal: PrincipalDep,
) -> SweepPublic:
    """Build the report now (again, if one exists): a new MLflow run. 409 while the sweep
    has unfinished jobs; it is built on its own when they finish. Only the sweep's owner
    or an admin (403)."""
    operations.require_change(principal, f"sweep {sweep.id}", sweep.owner)
    operations.rebuild_report(session, settings, database, sweep)
    return operations.describe_sweep(session, settings, sweep)


@router.get(
    "/{sweep_id}/report/{path:path}",
    response_class=FileResponse,
    responses={
        status.HTTP_200_OK: {"content": {"text/html": {}, "image/png": {}}},
        status.HTTP_400_BAD_REQUEST: {"model": ErrorPublic, "description": "a bad path"},
        status.HTTP_404_NOT_FOUND: {"model": ErrorPublic, "description": "no such file"},
    },
)
def download_report(sweep: SweepDep, path: str, tracking: TrackingDep) -> FileResponse:
    """One file of the report: ``report.html`` opens in a browser as it is."""
    fetched = tracking.fetch_file(operations.report_run(sweep), path)
    return FileResponse(
        fetched.file,
        filename=fetched.file.name,
        content_disposition_type="inline",  # report.html and report.png open in the browser
        background=BackgroundTask(remove_download, fetched.directory),
    )
