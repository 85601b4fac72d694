"""The error answers routes share, declared once so that the OpenAPI document lists every
status an operation can answer, each with the shape of its body (schemathesis checks
both, tests/api/test_fuzz.py).

``create_app`` adds ``API_ROUTES`` to every route under ``/api/v1`` and ``EVERY_ROUTE``
to the others; a route adds what is its own (404, 403, 409, 429, ``NOT_ENQUEUED``), and
its own declaration wins over a shared one with the same status.
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
        "description": "a wrong API token, or none where one is needed (writes once users "
        "exist, reads too with `REGBENCH_AUTH_READS`): `Authorization: Bearer <token>`",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    }
}
TOO_LARGE: Responses = {
    status.HTTP_413_CONTENT_TOO_LARGE: {
        "model": ErrorPublic,
        "description": "the request body is over `REGBENCH_MAX_BODY_BYTES`",
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
