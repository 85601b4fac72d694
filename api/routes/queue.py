"""GET /queue: jobs by state and queue, running jobs, live workers."""

from fastapi import APIRouter

from api import operations
from api.deps import SessionDep, SettingsDep
from api.schemas import QueuePublic

router = APIRouter(prefix="/queue", tags=["queue"])


@router.get("")
def read_queue(session: SessionDep, settings: SettingsDep) -> QueuePublic:
    """Every job counted by state and by queue; the running jobs with their progress,
    device, worker and heartbeat age; the workers seen within three heartbeat intervals."""
    return operations.queue_summary(session, settings)
