"""Limits on the work one request and one owner may ask for.

A small request can ask for a lot: a sweep's grid points times each point's train job
and analyses, or one call adding thousands of analyses. ``check_request`` refuses a
request that would create more than ``max_jobs_per_request`` jobs or whose specs list
more than ``max_analyses_per_spec`` analyses (``LimitError``: 422 naming the field), and
``check_queue`` one that would take its owner past ``max_queued_jobs_per_user`` queued
and running jobs (``QueueFullError``: 429). The per-owner count is taken before the
rows are written, so two requests at the same moment may both pass: a soft limit.

Until users exist every row's owner is ``ANONYMOUS``; the functions take the owner so
that they count per user once requests carry one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.tables import Experiment, Job, JobState

ANONYMOUS = "anonymous"
MAX_OFFSET = 2**31 - 1  # list pages: past every store's row count, within its integers
ACTIVE = (JobState.QUEUED, JobState.RUNNING)
LOOKUP_CHUNK = 500  # values per ``IN (...)``


class LimitError(ValueError):
    """A request over a limit on its size; ``errors`` in pydantic's shape (422), each
    ``loc`` a path into the request (``("body", "analyses")``)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


class QueueFullError(RuntimeError):
    """The owner has too many queued and running jobs for this request (429)."""

    def __init__(self, owner: str, active: int, adding: int, limit: int) -> None:
        self.owner, self.active, self.adding, self.limit = owner, active, adding, limit
        super().__init__(
            f"{owner!r} has {active} queued or running jobs; this request adds up to {adding}, "
            f"over the limit of {limit} per user (REGBENCH_MAX_QUEUED_JOBS_PER_USER): wait "
            "for some to finish or cancel some"
        )


def too_many_jobs(jobs: int, limit: int, loc: Sequence[str | int]) -> LimitError:
    return LimitError(
        [
            {
                "loc": list(loc),
                "msg": f"this request would create {jobs} jobs, over the limit of {limit} per "
                "request (REGBENCH_MAX_JOBS_PER_REQUEST): grid points times each point's "
                "train job and analyses; split it into several requests",
                "type": "too_many_jobs",
            }
        ]
    )


def too_many_analyses(count: int, limit: int, loc: Sequence[str | int]) -> dict[str, Any]:
    """One error (pydantic's shape) for a list of ``count`` analyses."""
    return {
        "loc": list(loc),
        "msg": f"{count} analyses, over the limit of {limit} per spec and per call "
        "(REGBENCH_MAX_ANALYSES_PER_SPEC)",
        "type": "too_many_analyses",
    }


def check_request(
    analyses: int, jobs: int, *, max_analyses: int, max_jobs: int, loc: Sequence[str | int]
) -> None:
    """One spec or one call: ``analyses`` listed, ``jobs`` it would create."""
    if analyses > max_analyses:
        raise LimitError([too_many_analyses(analyses, max_analyses, loc)])
    if jobs > max_jobs:
        raise too_many_jobs(jobs, max_jobs, loc)


def active_jobs(session: Session, owner: str = ANONYMOUS) -> int:
    """Queued and running jobs of the owner's experiments."""
    counted = session.scalar(
        select(func.count())
        .select_from(Job)
        .join(Experiment, Job.experiment_id == Experiment.id)
        .where(Experiment.owner == owner, Job.state.in_(ACTIVE))
    )
    return counted or 0


def stored_specs(session: Session, spec_hashes: Sequence[str]) -> set[str]:
    """Those of the hashes an experiment was recorded for (its dedup key, not forced)."""
    found: set[str] = set()
    for start in range(0, len(spec_hashes), LOOKUP_CHUNK):
        chunk = spec_hashes[start : start + LOOKUP_CHUNK]
        found.update(
            session.scalars(select(Experiment.dedup_key).where(Experiment.dedup_key.in_(chunk)))
        )
    return found


def check_queue(session: Session, adding: int, limit: int, owner: str = ANONYMOUS) -> None:
    """QueueFullError if ``adding`` more jobs would take the owner past ``limit``."""
    if adding <= 0:
        return
    active = active_jobs(session, owner)
    if active + adding > limit:
        raise QueueFullError(owner, active, adding, limit)
