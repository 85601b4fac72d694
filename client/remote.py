"""Talking to a regbench server over HTTP (``/api/v1``): submit sweeps and specs, read
progress, results, artifacts and reports, cancel.

HTTP only (httpx): the client never loads regcore, torch, a database or MLflow, so it
installs and starts fast anywhere. Grids are expanded by the server (``POST /sweeps``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

FINISHED = frozenset({"succeeded", "failed", "cancelled"})
DOWNLOAD_CHUNK_BYTES = 1 << 20


class ServerError(RuntimeError):
    """The server is unreachable or refused a request; the message says what to do.

    ``status_code`` is the HTTP status, or None when no answer came back at all.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def unreachable(self) -> bool:
        return self.status_code is None

    @property
    def invalid_input(self) -> bool:
        return self.status_code == httpx.codes.UNPROCESSABLE_ENTITY

    @property
    def not_found(self) -> bool:
        return self.status_code == httpx.codes.NOT_FOUND


class RegbenchClient:
    """One server, one connection pool. Use as a context manager (or call ``close``).

    ``transport`` replaces the network (tests pass an ``httpx.MockTransport``).
    """

    def __init__(
        self,
        server: str,
        token: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=f"{self.server}/api/v1",
            headers=headers,
            timeout=timeout_s,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------- submitting

    def submit_sweep(self, document: Mapping[str, Any], force: bool = False) -> dict[str, Any]:
        """A grid file ``{base, grid, name?}`` -> the server's SweepSubmissionPublic."""
        return self._json("POST", "/sweeps", json=dict(document), params=_force(force))

    def submit_experiment(self, spec: Mapping[str, Any], force: bool = False) -> dict[str, Any]:
        """One spec -> the experiment, with ``created`` False when it existed already."""
        return self._json("POST", "/experiments", json=dict(spec), params=_force(force))

    # ------------------------------------------------------------------- reading

    def sweeps(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """``{"data": [sweep, ...], "count": n}``, newest first."""
        return self._json("GET", "/sweeps", params={"limit": limit, "offset": offset})

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._json("GET", f"/sweeps/{_segment(sweep_id)}")

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        return self._json("GET", f"/experiments/{_segment(experiment_id)}")

    def results(self, sweep_id: str, baseline: str | None = None) -> dict[str, Any]:
        """``{"sweep_id", "metrics": [...], "rows": [...], "baseline"}``: mean, std, n per
        configuration, each row against ``baseline`` (a configuration or a row's index;
        the server's default is the first row)."""
        params = {"baseline": baseline} if baseline is not None else None
        return self._json("GET", f"/sweeps/{_segment(sweep_id)}/results", params=params)

    def results_csv(self, sweep_id: str, baseline: str | None = None) -> str:
        path = f"/sweeps/{_segment(sweep_id)}/results"
        params = {"format": "csv", **({"baseline": baseline} if baseline is not None else {})}
        return self._request("GET", path, params=params).text

    def whoami(self) -> dict[str, Any]:
        """Who this client's token names: {name, admin, authenticated}."""
        return self._json("GET", "/whoami")

    def queue(self) -> dict[str, Any]:
        """Jobs by state and queue, the running jobs, the live workers."""
        return self._json("GET", "/queue")

    # ------------------------------------------------------------------- cancelling

    def cancel(self, target_id: str) -> dict[str, Any]:
        """Cancel a sweep, or else the experiment with that id.

        Returns the server's answer (with ``cancelled_jobs``) plus ``"target"``: "sweep" or
        "experiment", saying which one the id named.
        """
        try:
            body = self._json("POST", f"/sweeps/{_segment(target_id)}/cancel")
            return {**body, "target": "sweep"}
        except ServerError as exc:
            if not exc.not_found:
                raise
        try:
            body = self._json("POST", f"/experiments/{_segment(target_id)}/cancel")
            return {**body, "target": "experiment"}
        except ServerError as exc:
            if not exc.not_found:
                raise
        raise ServerError(f"no sweep or experiment has the id {target_id!r}", 404)

    # ------------------------------------------------------------------- files

    def artifacts(self, experiment_id: str) -> list[dict[str, Any]]:
        """Every file and directory of the experiment's MLflow run: ``{path, size, is_dir}``."""
        return self._json("GET", f"/experiments/{_segment(experiment_id)}/artifacts")["data"]

    def download(self, experiment_id: str, path: str, dest_dir: Path) -> Path:
        """One artifact file into ``dest_dir`` (under its own name); returns where it went."""
        url = f"/experiments/{_segment(experiment_id)}/artifacts/{_file_path(path)}"
        return self._download(url, path_inside(dest_dir, PurePosixPath(path).name))

    def report_files(self, sweep_id: str) -> list[dict[str, Any]]:
        """The sweep report's files (report.png, report.html, ...); 404 while it has none."""
        return self._json("GET", f"/sweeps/{_segment(sweep_id)}/report")["data"]

    def download_report_file(self, sweep_id: str, path: str, dest_dir: Path) -> Path:
        """One report file into ``dest_dir``, keeping its path relative to the report."""
        url = f"/sweeps/{_segment(sweep_id)}/report/{_file_path(path)}"
        return self._download(url, path_inside(dest_dir, path))

    # ------------------------------------------------------------------- waiting

    def wait_sweep(
        self,
        sweep_id: str,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = 2.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Poll the sweep until it finished (succeeded, failed or cancelled); returns it."""
        return self._poll(lambda: self.sweep(sweep_id), on_update, poll_s, timeout_s)

    def wait_experiment(
        self,
        experiment_id: str,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = 2.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Poll one experiment until it finished; returns it."""
        return self._poll(lambda: self.experiment(experiment_id), on_update, poll_s, timeout_s)

    @staticmethod
    def _poll(
        read: Callable[[], dict[str, Any]],
        on_update: Callable[[dict[str, Any]], None] | None,
        poll_s: float,
        timeout_s: float | None,
    ) -> dict[str, Any]:
        started = time.monotonic()
        while True:
            state = read()
            if on_update is not None:
                on_update(state)
            if state["status"] in FINISHED:
                return state
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{state['id']} still {state['status']} after {timeout_s:g} s")
            time.sleep(poll_s)

    # ------------------------------------------------------------------- HTTP

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        _raise_for_status(method, path, response)
        return response

    def _download(self, url_path: str, target: Path) -> Path:
        """Stream into a temporary file beside ``target``, then rename: a broken download
        never leaves a truncated file under the real name."""
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.http.stream("GET", url_path) as response:
                if response.is_error:
                    response.read()
                    _raise_for_status("GET", url_path, response)
                descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
                try:
                    with os.fdopen(descriptor, "wb") as file:
                        for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                            file.write(chunk)
                    Path(partial).replace(target)
                except BaseException:
                    Path(partial).unlink(missing_ok=True)
                    raise
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return target

    def _unreachable(self, exc: httpx.TransportError) -> ServerError:
        # Standard library only, and loaded on this error path alone: the client still
        # starts without the service's modules.
        from service.redact import mask_text, mask_uri

        reason = mask_text(str(exc) or type(exc).__name__)
        return ServerError(
            f"cannot reach the regbench server at {mask_uri(self.server)} ({reason}); "
            "start one with `regbench serve` or pass --server / REGBENCH_SERVER"
        )


def _force(force: bool) -> dict[str, str]:
    return {"force": "true" if force else "false"}


def _segment(value: str) -> str:
    """An id as one URL path segment (a stray ``/`` or ``?`` must not change the route)."""
    return quote(value, safe="")


def _file_path(path: str) -> str:
    """A relative file path as URL path segments (``/`` kept, everything else escaped)."""
    return quote(path.strip("/"), safe="/")


def path_inside(dest_dir: Path, relative: str) -> Path:
    """``dest_dir / relative``, refusing paths (from the server) that would leave dest_dir."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise ServerError(f"refusing to write {relative!r}: not a path inside {dest_dir}")
    return Path(dest_dir).joinpath(*parts)


def _raise_for_status(method: str, path: str, response: httpx.Response) -> None:
    if not response.is_error:
        return
    status = response.status_code
    detail = error_detail(response)
    if status == httpx.codes.UNPROCESSABLE_ENTITY:
        message = f"the server refused the request ({method} {path} -> 422):\n{detail}"
    elif status == httpx.codes.UNAUTHORIZED:
        message = f"{method} {path} -> {status}: {detail} (pass --token or set REGBENCH_TOKEN)"
    else:
        message = f"{method} {path} -> {status}: {detail}"
    raise ServerError(message, status)


def error_detail(response: httpx.Response) -> str:
    """The server's ``detail``; FastAPI's validation errors become one line per field."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        return "\n".join(_field_error(error) for error in detail)
    return str(detail)


def _field_error(error: Any) -> str:
    if not isinstance(error, Mapping):
        return f"  {error}"
    return f"  {field_path(error.get('loc', []))}: {error.get('msg', error)}"


def field_path(loc: list[Any]) -> str:
    """``["body", "grid", "regularizers", 1, 0, "name"]`` -> ``grid.regularizers[1][0].name``.

    The leading ``body`` says nothing to a user who wrote a YAML file; grid keys that
    contain dots (``training.seed``) are quoted so the path stays unambiguous.
    """
    parts = list(loc[1:] if loc[:1] == ["body"] else loc)
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif "." in str(part):
            text += f"[{str(part)!r}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(the whole request)"
