"""Talking to a regbench server over HTTP: submit specs or grids, wait, fetch results.

Only HTTP (httpx) and pure helpers (``regcore.grid`` expands a grid, ``regcore.compare``
makes the table): the client never loads torch, a database or MLflow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from regcore import grid as grids

FINISHED = {"succeeded", "failed", "cancelled"}


class ServerError(RuntimeError):
    """The server is unreachable or refused a request; the message says what to do."""


@dataclass(frozen=True)
class Submitted:
    id: str
    configuration: str
    created: bool


class RegbenchClient:
    def __init__(self, server: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self.http = httpx.Client(
            base_url=f"{self.server}/api/v1", headers=headers, timeout=timeout_s
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerError(
                f"cannot reach the regbench server at {self.server} ({exc}); "
                "start one with `regbench serve` or pass --server"
            ) from None
        if response.status_code >= 400:
            raise ServerError(f"{method} {path} -> {response.status_code}: {_detail(response)}")
        return response.json()

    def submit(self, document: Mapping[str, Any], *, force: bool = False) -> list[Submitted]:
        """A spec, or a grid ({base, grid}) expanded here: one POST per grid point."""
        if grids.is_grid(document):
            points = [
                (p.configuration, p.spec) for p in grids.expand(document["base"], document["grid"])
            ]
        else:
            points = [(str(document.get("name", "experiment")), dict(document))]
        submitted = []
        for configuration, spec in points:
            body = self.request(
                "POST", "/experiments", json=spec, params={"force": str(force).lower()}
            )
            submitted.append(Submitted(body["id"], configuration, bool(body.get("created", True))))
        return submitted

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        return self.request("GET", f"/experiments/{experiment_id}")

    def wait(
        self,
        ids: list[str],
        on_update: Callable[[dict[str, dict[str, Any]]], None] | None = None,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Poll until every experiment finished; returns id -> experiment."""
        started = time.monotonic()
        while True:
            states = {experiment_id: self.experiment(experiment_id) for experiment_id in ids}
            if on_update is not None:
                on_update(states)
            if all(state["status"] in FINISHED for state in states.values()):
                return states
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise ServerError(f"experiments still running after {timeout_s:.0f} s")
            time.sleep(poll_s)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI's validation errors: one line per field
        return "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', []))}: {error.get('msg')}"
            for error in detail
        )
    return str(detail)
