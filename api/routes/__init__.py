"""One module per resource; ``api_router`` gathers those served under ``/api/v1``."""

from fastapi import APIRouter

from api.routes import catalog, experiments, queue, sweeps, whoami

api_router = APIRouter()
api_router.include_router(experiments.router)
api_router.include_router(sweeps.router)
api_router.include_router(queue.router)
api_router.include_router(catalog.router)
api_router.include_router(whoami.router)
