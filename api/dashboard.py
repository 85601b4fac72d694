"""The sweep dashboard: server-rendered HTML under ``/dashboard`` (Jinja2, no build step).

``/dashboard`` lists the sweeps with their progress, the queue and the live workers
with their slots; ``/dashboard/sweeps/{id}`` shows one sweep: its progress and running
jobs, its experiments (state, device, progress, MLflow links), its results table and
its report's figures. The pages read through the same calls as the JSON API
(``api.operations``, ``service.sweeps``) and honour the same tokens: each page runs
``api.deps.authenticate``, so it answers whatever the JSON API would answer the same
caller (anyone allowed to read reads every sweep, as ``GET /api/v1/sweeps`` does).

A browser cannot send ``Authorization: Bearer``: where reads need a token
(``REGBENCH_AUTH_READS``) a page answers 401 with a sign-in form, whose POST checks the
token and keeps it in an HttpOnly, SameSite=Strict cookie (``deps.TOKEN_COOKIE``; Secure
over https) that ``authenticate`` reads for reads only. The token never travels in a URL,
so no access log shows it.

Everything shown is escaped (Jinja2's autoescape); the pages forbid inline scripts and
other origins (``Content-Security-Policy``). A little JavaScript (``static/dashboard``)
refreshes a page in place every few seconds while something on it is still moving.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.orm import Session

from api import operations
from api.deps import (
    TOKEN_COOKIE,
    SessionDep,
    SettingsDep,
    TrackingDep,
    authenticate,
    get_sweep,
)
from api.schemas import SweepPublic, mlflow_run_url
from api.tracking import ArtifactNotFoundError, Tracking, TrackingUnavailableError
from regcore import __version__
from service import jobstore, sweeps, users
from service.reports import REPORT_FILES
from service.settings import Settings
from service.tables import Experiment, Job, JobState, ReportStatus, Sweep
from service.users import Principal

PREFIX = "/dashboard"
API_PREFIX = "/api/v1"
PAGE_SIZE = 50
MAX_TOKEN_CHARS = 200  # a token is ~46; a longer form field is not one
REFRESH_MS = 3000  # how often a page that is still moving refreshes itself
FINISHED = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
SECURITY_HEADERS = {
    # No inline script or style, nothing from another origin: an escaped name stays text
    # even if escaping were ever missed somewhere.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)


class SignInRequiredError(Exception):
    """A page needs a token the request did not bring: answered with the sign-in form."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def viewer(request: Request, settings: SettingsDep, session: SessionDep) -> Principal:
    """``authenticate``, with its 401 answered by the sign-in page instead of JSON."""
    try:
        return authenticate(request, settings, session, request.headers.get("authorization"))
    except HTTPException as exc:
        if exc.status_code == status.HTTP_401_UNAUTHORIZED:
            raise SignInRequiredError(str(exc.detail)) from None
        raise


ViewerDep = Annotated[Principal, Depends(viewer)]


async def sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequiredError)
    return _page(request, "login.html", status.HTTP_401_UNAUTHORIZED, message=exc.message)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.add_exception_handler(SignInRequiredError, sign_in_required)


# --------------------------------------------------------------------------- formatting


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _when(moment: datetime | None) -> str:
    return "–" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: float | None, std: float | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{value:.4g}"
    if std is not None and math.isfinite(std) and std > 0:
        text += f" ± {std:.2g}"
    return text


_templates.filters.update(percent=_percent, duration=_duration, when=_when, number=_number)
_templates.globals.update(prefix=PREFIX, api=API_PREFIX, version=__version__, quote=quote)


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    values = {"refresh_ms": None, "principal": None, "signed_in": False, **context}
    root = request.scope.get("root_path", "").rstrip("/")
    html = _templates.get_template(template).render(root=root, **values)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


# --------------------------------------------------------------------------- sweeps page


@router.get("")
def sweeps_page(
    request: Request,
    principal: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    """The sweeps, newest first, with their progress; the queue; the live workers."""
    live = operations.live_workers(session, settings)
    page, count = sweeps.list_sweeps(session, limit=PAGE_SIZE, offset=offset)
    described = operations.describe_sweeps(session, settings, page, live)
    queue = operations.queue_summary(session, settings)
    return _page(
        request,
        "sweeps.html",
        principal=principal,
        signed_in=_signed_in(request),
        sweeps=described,
        count=count,
        offset=offset,
        page_size=PAGE_SIZE,
        queue=queue,
        refresh_ms=REFRESH_MS,  # the queue and the workers move all the time
    )


# --------------------------------------------------------------------------- one sweep


@dataclass(frozen=True)
class ExperimentRow:
    id: str
    configuration: str
    seed: int
    owner: str
    state: str
    device: str | None
    progress: float  # 0..1 over its jobs, a running job counted by its own progress
    jobs_done: int
    jobs: int
    running: str | None  # the running job's kind and message
    error: str | None
    mlflow_url: str | None
    mlflow_run_id: str | None


def experiment_row(
    experiment: Experiment, configuration: str, seed: int, mlflow_ui_url: str | None
) -> ExperimentRow:
    jobs: Sequence[Job] = experiment.jobs
    done = sum(job.state in FINISHED for job in jobs)
    moving = [job for job in jobs if job.state == JobState.RUNNING]
    partial = sum(job.progress for job in moving)
    devices = [job.device for job in sorted(jobs, key=_started) if job.device]
    errors = [job.error for job in jobs if job.error]
    return ExperimentRow(
        id=experiment.id,
        configuration=configuration,
        seed=seed,
        owner=experiment.owner,
        state=jobstore.experiment_status(experiment),
        device=devices[-1] if devices else None,
        progress=(done + partial) / len(jobs) if jobs else 0.0,
        jobs_done=done,
        jobs=len(jobs),
        running=", ".join(_running_label(job) for job in moving) or None,
        error=errors[0] if errors else None,
        mlflow_url=mlflow_run_url(mlflow_ui_url, experiment),
        mlflow_run_id=experiment.mlflow_run_id,
    )


def _started(job: Job) -> datetime:
    return job.started_at or job.created_at


def _running_label(job: Job) -> str:
    label = f"{job.kind} {_percent(job.progress)}"
    return f"{label} ({job.message})" if job.message else label


@dataclass(frozen=True)
class ReportView:
    figures: list[str]  # images shown on the page
    files: list[str]  # everything, linked
    error: str | None  # why the files could not be listed (the tracking store is down)


def report_view(sweep: Sweep, tracking: Tracking) -> ReportView | None:
    """The report's files (every figure it has, shown), or None until it is built."""
    if sweep.report_status != ReportStatus.DONE or not sweep.report_run_id:
        return None
    error = None
    try:
        infos = tracking.list_artifacts(sweep.report_run_id)
        files = sorted(info.path for info in infos if not info.is_dir)
    except (TrackingUnavailableError, ArtifactNotFoundError) as exc:
        files, error = list(REPORT_FILES), str(exc)
    figures = sorted(
        (f for f in files if f.lower().endswith((".png", ".svg"))),
        key=lambda f: (f != "report.png", f),  # the overview first
    )
    return ReportView(figures=figures, files=files, error=error)


def _ui_link(settings: Settings, path: str) -> str | None:
    return f"{settings.mlflow_ui_url.rstrip('/')}/#/{path}" if settings.mlflow_ui_url else None


@router.get("/sweeps/{sweep_id}")
def sweep_page(
    request: Request,
    sweep_id: str,
    principal: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
    tracking: TrackingDep,
) -> Response:
    """One sweep: progress, running jobs, experiments, results table, report."""
    sweep = _sweep_or_none(session, sweep_id)
    if sweep is None:
        return _page(
            request,
            "missing.html",
            status.HTTP_404_NOT_FOUND,
            principal=principal,
            signed_in=_signed_in(request),
            what=f"no sweep with id {sweep_id!r}",
        )
    described: SweepPublic = operations.describe_sweep(session, settings, sweep)
    rows = [
        experiment_row(m.experiment, m.configuration, m.seed, settings.mlflow_ui_url)
        for m in sweep.members
    ]
    results = operations.sweep_results(sweep)
    report = report_view(sweep, tracking)
    unfinished = described.status in (JobState.QUEUED, JobState.RUNNING)
    settling = sweep.report_status in (ReportStatus.NONE, ReportStatus.BUILDING)
    mlflow_experiment = sweep.mlflow_experiment_id
    return _page(
        request,
        "sweep.html",
        principal=principal,
        signed_in=_signed_in(request),
        sweep=described,
        experiments=rows,
        results=results,
        report=report,
        mlflow_experiment_url=(
            _ui_link(settings, f"experiments/{mlflow_experiment}") if mlflow_experiment else None
        ),
        mlflow_report_url=(
            _ui_link(settings, f"experiments/{mlflow_experiment}/runs/{sweep.report_run_id}")
            if mlflow_experiment and sweep.report_run_id
            else None
        ),
        # Still moving: refresh until the jobs are done and the report is built (or failed).
        refresh_ms=REFRESH_MS if unfinished or settling else None,
    )


def _sweep_or_none(session: Session, sweep_id: str) -> Sweep | None:
    try:
        return get_sweep(session, sweep_id)
    except HTTPException as exc:
        if exc.status_code == status.HTTP_404_NOT_FOUND:
            return None
        raise


# --------------------------------------------------------------------------- signing in


def _signed_in(request: Request) -> bool:
    return TOKEN_COOKIE in request.cookies


@router.get("/login")
def login_page(request: Request) -> Response:
    return _page(request, "login.html", message=None)


def _same_origin(request: Request) -> bool:
    """A form posted from this site (or by a client that sends no Origin)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def check_token(settings: Settings, session: Session, token: str) -> Principal | None:
    """Whom ``token`` names, as ``authenticate`` would see it; None for a wrong one."""
    shared = settings.api_token.get_secret_value() if settings.api_token else ""
    if shared and secrets.compare_digest(token.encode(), shared.encode()):
        return Principal(users.API_TOKEN_USER, admin=True)
    user = users.find_user(session, token)
    return None if user is None else Principal(user.name, admin=user.admin)


@router.post("/login")
async def login(request: Request, settings: SettingsDep) -> Response:
    """Check the token of the sign-in form and keep it in the dashboard's cookie."""
    if not _same_origin(request):
        return _page(request, "login.html", status.HTTP_403_FORBIDDEN, message="cross-site")
    root = request.scope.get("root_path", "").rstrip("/")
    body = await request.body()
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=5)
    except ValueError:  # more fields than a sign-in form has
        fields = {}
    token = (fields.get("token") or [""])[0].strip()
    database = request.app.state.database

    def lookup() -> Principal | bool | None:
        """Whom the token names; True when this server has no tokens at all."""
        with database.session() as session:
            if settings.api_token is None and not users.any_users(session):
                return True
            if not token or len(token) > MAX_TOKEN_CHARS:
                return None
            return check_token(settings, session, token)

    principal = await run_in_threadpool(lookup)
    if principal is True:  # the embedded default: everyone is the local user already
        return RedirectResponse(f"{root}{PREFIX}", status_code=status.HTTP_303_SEE_OTHER)
    if principal is None:
        message = "wrong API token (unknown or revoked)" if token else "enter your API token"
        return _page(request, "login.html", status.HTTP_401_UNAUTHORIZED, message=message)
    response = RedirectResponse(f"{root}{PREFIX}", status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    root = request.scope.get("root_path", "").rstrip("/")
    response = RedirectResponse(f"{root}{PREFIX}/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict")
    return response
