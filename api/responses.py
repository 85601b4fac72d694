"""The error answers routes share, declared once so that the OpenAPI document lists every
status an operation can answer, each with the shape of its body (schemathesis checks
both, tests/api/test_fuzz.py).

``create_app`` adds ``API_ROUTES`` to every route under ``/api/v1`` and ``EVERY_ROUTE``
to the others; a route adds what is its own (``not_found``, ``conflict``,
``NOT_ENQUEUED``), and its own declaration wins over a shared one with the same status.
422 (FastAPI's ``HTTPValidationError``: ``detail[].loc`` is the field path) is declared
by FastAPI on every operation that takes parameters or a body.
"""

from __future__ import annotations

from typing import Any

from fastapi import status

from api.schemas import ErrorPublic, NotEnqueuedPublic

Responses = dict[int | str, dict[str, Any]]

UNAUTHORIZED: Responses = {
    status.HTTP_401_UNAUTHORIZED: {
        "model": ErrorPublic,
        "description": "`REGBENCH_API_TOKEN` is set and the request does not carry it "
        "(`Authorization: Bearer <token>`)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    }
}
TOO_LARGE: Responses = {
    status.HTTP_413_CONTENT_TOO_LARGE: {
        "model": ErrorPublic,
        "description": "the request body is over the limit (1 MiB)",
    }
}
UNAVAILABLE: Responses = {
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "model": ErrorPublic,
        "description": "the job store or the tracking store is unavailable; try again later",
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
    }
}
# Submissions: the same, or recorded but not enqueued (the body names the jobs).
NOT_ENQUEUED: Responses = {
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "model": NotEnqueuedPublic | ErrorPublic,
        "description": "recorded and queued in the job store, but the broker is unavailable "
        "(the body names the experiment or sweep and its jobs; the reconciler enqueues them "
        "later); or the job store or tracking store is unavailable and nothing is recorded",
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
    }
}

API_ROUTES: Responses = {**UNAUTHORIZED, **TOO_LARGE, **UNAVAILABLE}
EVERY_ROUTE: Responses = {**TOO_LARGE}


def not_found(what: str) -> Responses:
    return {status.HTTP_404_NOT_FOUND: {"model": ErrorPublic, "description": what}}


def conflict(what: str) -> Responses:
    return {status.HTTP_409_CONFLICT: {"model": ErrorPublic, "description": what}}


def bad_path(what: str = "a bad path") -> Responses:
    return {status.HTTP_400_BAD_REQUEST: {"model": ErrorPublic, "description": what}}


def forbidden(what: str) -> Responses:
    """For a route that answers 403 (another user's work)."""
    return {status.HTTP_403_FORBIDDEN: {"model": ErrorPublic, "description": what}}


def too_many(what: str) -> Responses:
    """For a route that answers 429 (a per-user limit), with ``Retry-After``."""
    return {
        status.HTTP_429_TOO_MANY_REQUESTS: {
            "model": ErrorPublic,
            "description": what,
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
        }
    }
