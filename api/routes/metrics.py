"""GET /metrics: the job store's numbers for Prometheus (text exposition format).

Served at the root, next to ``/healthz``, where Prometheus looks by default. A plain
``def`` route: FastAPI runs it in its thread pool, so the scrape's queries never block
the event loop. A job store that does not answer gives 503 (the app's handler for
sqlalchemy's ``OperationalError``).
"""

from threading import Lock
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.prometheus import metrics_registry
from api.schemas import ErrorPublic

router = APIRouter(tags=["metrics"])
_registry_lock = Lock()  # two first scrapes at once must not make two registries


def get_registry(request: Request) -> CollectorRegistry:
    """The app's own registry, made at its first scrape (the app's start-up knows
    nothing of metrics). The collector reads ``app.state.database`` at every scrape."""
    state = request.app.state
    with _registry_lock:
        registry: CollectorRegistry | None = getattr(state, "metrics_registry", None)
        if registry is None:
            registry = metrics_registry(lambda: state.database, state.settings)
            state.metrics_registry = registry
    return registry


RegistryDep = Annotated[CollectorRegistry, Depends(get_registry)]


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        status.HTTP_200_OK: {"content": {CONTENT_TYPE_LATEST: {}}},
        status.HTTP_503_SERVICE_UNAVAILABLE: {
            "model": ErrorPublic,
            "description": "the job store is unavailable",
        },
    },
)
def metrics(registry: RegistryDep) -> Response:
    """Jobs by queue, state and kind; runnable queue depth and the oldest runnable job's
    wait; running jobs by device; failures; run-time histograms; live workers."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
