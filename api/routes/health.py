"""GET /healthz: liveness (it answers) and readiness (database, broker, tracking).

200 when every component answers, else 503; each component says ok or why not. The
broker and a tracking server are given ``broker_timeout_s``, so the probe stays short.
"""

import time
from collections.abc import Callable, Iterable

from celery import Celery
from fastapi import APIRouter, Response, status
from sqlalchemy import text

from api.deps import CeleryDep, DatabaseDep, SettingsDep, TrackingDep
from api.schemas import ComponentHealthPublic, HealthPublic
from service.db import Database
from service.redact import mask_text

router = APIRouter(tags=["health"])


def check_database(database: Database) -> None:
    with database.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def check_broker(celery: Celery, queue: str, timeout_s: float) -> None:
    """Connect, then declare the default queue: a real round trip on every transport (a
    bare connect opens nothing on kombu's SQLAlchemy transport)."""
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout_s)
        connection.default_channel.queue_declare(queue=queue, passive=False)


def probe(check: Callable[[], None], secrets: Iterable[str] = ()) -> ComponentHealthPublic:
    """ok, or why not: the error's text with URI passwords and ``secrets`` masked (the
    endpoint is open to anyone)."""
    start = time.perf_counter()
    try:
        check()
    except Exception as exc:  # any failure means "not ready"; say which
        detail = mask_text(f"{type(exc).__name__}: {exc}", secrets)
        return ComponentHealthPublic(
            status="unavailable", detail=detail[:500], seconds=time.perf_counter() - start
        )
    return ComponentHealthPublic(status="ok", seconds=time.perf_counter() - start)


@router.get(
    "/healthz",
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": HealthPublic}},
)
def health(
    response: Response,
    settings: SettingsDep,
    database: DatabaseDep,
    celery: CeleryDep,
    tracking: TrackingDep,
) -> HealthPublic:
    timeout = settings.broker_timeout_s
    secrets = settings.secrets
    components = {
        "database": probe(lambda: check_database(database), secrets),
        "broker": probe(lambda: check_broker(celery, settings.default_queue, timeout), secrets),
        "tracking": probe(lambda: tracking.ping(timeout), secrets),
    }
    ready = all(component.status == "ok" for component in components.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthPublic(
        status="ok" if ready else "unavailable",
        components=components,
        instance=settings.instance_id,
    )
