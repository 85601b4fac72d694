"""Users, tokens and owners over HTTP, on the real app (SQLite and PostgreSQL job stores).

Once a user exists, writes need a token (401 without), reads need one only with
REGBENCH_AUTH_READS; every experiment and sweep records who submitted it; only the owner
or an admin cancels, adds analyses or rebuilds a report (403 otherwise); a token never
comes back in a response or reaches a log line. With no user (the embedded default)
every request runs as the local user, without a token.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from service import users
from service.db import Database
from service.schema import upgrade_database
from service.settings import Settings
from tests.api.conftest import SPEC, Api, start_api

EXPERIMENTS = "/api/v1/experiments"
SWEEPS = "/api/v1/sweeps"
GRID: dict[str, Any] = {"training.seed": [0, 1]}
SWEEP: dict[str, Any] = {"name": "tiny", "base": SPEC, "grid": GRID}


@dataclass
class Tokens:
    ann: str
    bob: str
    root: str  # an admin

    def header(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, who)}"}


def add_users(settings: Settings) -> Tokens:
    upgrade_database(settings.job_store_url)
    database = Database(settings.job_store_url)
    try:
        with database.session() as session:
            tokens = Tokens(
                ann=users.add_user(session, "ann"),
                bob=users.add_user(session, "bob"),
                root=users.add_user(session, "root", admin=True),
            )
            session.commit()
    finally:
        database.dispose()
    return tokens


@pytest.fixture
def tokens(any_settings: Settings) -> Tokens:
    return add_users(any_settings)


@pytest.fixture
def users_api(any_settings: Settings, tokens: Tokens) -> Iterator[Api]:
    """The app on each backend with three users: ann, bob, root (an admin)."""
    yield from start_api(any_settings)


def with_seed(seed: int) -> dict[str, Any]:
    """SPEC with another seed: another experiment (names are not part of a spec's hash)."""
    return {**SPEC, "training": {**SPEC["training"], "seed": seed}}


def post(api: Api, path: str, who: str | None, tokens: Tokens, **kwargs: Any) -> httpx.Response:
    headers = tokens.header(who) if who else {}
    return api.client.post(path, headers=headers, **kwargs)


# --------------------------------------------------------------------------- 401


def test_writes_need_a_token_once_users_exist(users_api: Api, tokens: Tokens) -> None:
    experiment = post(users_api, EXPERIMENTS, "ann", tokens, json=SPEC).json()["id"]
    sweep = post(users_api, SWEEPS, "ann", tokens, json=SWEEP).json()["id"]
    recorded = users_api.client.get(EXPERIMENTS).json()["count"]
    writes = [
        (EXPERIMENTS, {"json": SPEC}),
        (SWEEPS, {"json": SWEEP}),
        (f"{EXPERIMENTS}/{experiment}/cancel", {}),
        (f"{EXPERIMENTS}/{experiment}/analyses", {"json": [{"kind": "calibration"}]}),
        (f"{SWEEPS}/{sweep}/cancel", {}),
        (f"{SWEEPS}/{sweep}/report", {}),
    ]
    for path, kwargs in writes:
        for headers in ({}, {"Authorization": "Bearer rb_not-a-token"}, {"Authorization": "x"}):
            response = users_api.client.post(path, headers=headers, **kwargs)
            assert response.status_code == 401, (path, headers, response.text)
            assert "API token" in response.json()["detail"]
            assert response.headers["www-authenticate"] == "Bearer"
    # Nothing changed: ann's experiment is still queued, and nothing else was recorded.
    assert users_api.experiment(experiment)["status"] == "queued"
    assert len(users_api.experiment(experiment)["jobs"]) == 2
    assert users_api.client.get(EXPERIMENTS).json()["count"] == recorded
    assert users_api.client.get(SWEEPS).json()["count"] == 1


def test_reads_are_open_unless_configured(users_api: Api, tokens: Tokens) -> None:
    for path in (EXPERIMENTS, SWEEPS, "/api/v1/queue", "/api/v1/catalog"):
        assert users_api.client.get(path).status_code == 200, path
        assert users_api.client.get(path, headers=tokens.header("bob")).status_code == 200
        # A wrong token is refused even where none is needed: it is a mistake worth saying.
        wrong = users_api.client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, path
    me = users_api.client.get("/api/v1/whoami").json()
    assert me == {"name": "anonymous", "admin": False, "authenticated": False}


def test_reads_need_a_token_with_auth_reads(any_settings: Settings, tokens: Tokens) -> None:
    for api in start_api(any_settings.model_copy(update={"auth_reads": True})):
        for path in (EXPERIMENTS, SWEEPS, "/api/v1/queue", "/api/v1/catalog", "/api/v1/whoami"):
            refused = api.client.get(path)
            assert refused.status_code == 401, path
            assert "API token" in refused.json()["detail"]
            assert api.client.get(path, headers=tokens.header("bob")).status_code == 200
        assert api.client.get("/healthz").status_code == 200  # probes stay open
        assert api.client.get("/metrics").status_code == 200
        me = api.client.get("/api/v1/whoami", headers=tokens.header("root")).json()
        assert me == {"name": "root", "admin": True, "authenticated": True}


def test_a_removed_user_or_replaced_token_stops_working(users_api: Api, tokens: Tokens) -> None:
    assert post(users_api, EXPERIMENTS, "bob", tokens, json=SPEC).status_code == 201
    with users_api.database.session() as session:
        ann_token = users.new_user_token(session, "ann")
        users.remove_user(session, "bob")
        session.commit()
    assert post(users_api, EXPERIMENTS, "bob", tokens, json=SPEC).status_code == 401
    assert post(users_api, EXPERIMENTS, "ann", tokens, json=SPEC).status_code == 401
    fresh = users_api.client.post(
        EXPERIMENTS, json=SPEC, headers={"Authorization": f"Bearer {ann_token}"}
    )
    assert fresh.status_code == 200  # the same spec: bob's experiment, which stays his
    assert fresh.json()["owner"] == "bob"


# --------------------------------------------------------------------------- owners


def test_experiments_record_their_owner(users_api: Api, tokens: Tokens) -> None:
    created = post(users_api, EXPERIMENTS, "ann", tokens, json=SPEC)
    assert created.status_code == 201 and created.json()["owner"] == "ann"
    experiment_id = created.json()["id"]
    assert users_api.experiment(experiment_id)["owner"] == "ann"
    listed = users_api.client.get(EXPERIMENTS).json()["data"]
    assert [(e["id"], e["owner"]) for e in listed] == [(experiment_id, "ann")]
    # The same spec from bob is ann's experiment, still hers.
    again = post(users_api, EXPERIMENTS, "bob", tokens, json=SPEC)
    assert again.status_code == 200
    assert (again.json()["id"], again.json()["owner"]) == (experiment_id, "ann")
    forced = post(users_api, EXPERIMENTS, "bob", tokens, json=SPEC, params={"force": True})
    assert forced.status_code == 201 and forced.json()["owner"] == "bob"


def test_only_the_owner_or_an_admin_cancels_an_experiment(users_api: Api, tokens: Tokens) -> None:
    experiment_id = post(users_api, EXPERIMENTS, "ann", tokens, json=SPEC).json()["id"]
    cancel = f"{EXPERIMENTS}/{experiment_id}/cancel"
    refused = post(users_api, cancel, "bob", tokens)
    assert refused.status_code == 403
    detail = refused.json()["detail"]
    assert "belongs to 'ann'" in detail and "only its owner or an admin" in detail
    assert "'bob'" in detail
    analyses = post(users_api, f"{EXPERIMENTS}/{experiment_id}/analyses", "bob", tokens,
                    json=[{"kind": "calibration"}])  # fmt: skip
    assert analyses.status_code == 403
    assert users_api.experiment(experiment_id)["status"] == "queued"  # untouched
    assert len(users_api.experiment(experiment_id)["jobs"]) == 2
    added = post(users_api, f"{EXPERIMENTS}/{experiment_id}/analyses", "ann", tokens,
                 json=[{"kind": "calibration"}])  # fmt: skip
    assert added.status_code == 201
    cancelled = post(users_api, cancel, "ann", tokens)
    assert cancelled.status_code == 200 and len(cancelled.json()["cancelled_jobs"]) == 3
    assert users_api.experiment(experiment_id)["status"] == "cancelled"
    # An admin cancels anyone's.
    other = post(users_api, EXPERIMENTS, "bob", tokens, json=with_seed(7)).json()
    assert other["owner"] == "bob" and other["status"] == "queued"
    by_admin = post(users_api, f"{EXPERIMENTS}/{other['id']}/cancel", "root", tokens)
    assert by_admin.status_code == 200 and by_admin.json()["status"] == "cancelled"


def test_sweeps_record_their_owner_and_share_experiments(users_api: Api, tokens: Tokens) -> None:
    anns = post(users_api, SWEEPS, "ann", tokens, json=SWEEP)
    assert anns.status_code == 201 and anns.json()["owner"] == "ann"
    ann_sweep = anns.json()
    assert users_api.client.get(f"{SWEEPS}/{ann_sweep['id']}").json()["owner"] == "ann"
    # The same grid from bob: a sweep of his own, over ann's experiments (still hers).
    bobs = post(users_api, SWEEPS, "bob", tokens, json=SWEEP)
    assert bobs.status_code == 201, bobs.text
    bob_sweep = bobs.json()
    assert bob_sweep["id"] != ann_sweep["id"] and bob_sweep["owner"] == "bob"
    assert bob_sweep["new_experiments"] == 0
    shared = [point["id"] for point in ann_sweep["experiments"]]
    assert [point["id"] for point in bob_sweep["experiments"]] == shared
    for experiment_id in shared:
        assert users_api.experiment(experiment_id)["owner"] == "ann"
    # Submitted again by each: their own sweep back, 200.
    assert post(users_api, SWEEPS, "bob", tokens, json=SWEEP).json()["id"] == bob_sweep["id"]
    assert post(users_api, SWEEPS, "ann", tokens, json=SWEEP).json()["id"] == ann_sweep["id"]
    owners = {s["id"]: s["owner"] for s in users_api.client.get(SWEEPS).json()["data"]}
    assert owners == {ann_sweep["id"]: "ann", bob_sweep["id"]: "bob"}


def test_only_the_owner_or_an_admin_cancels_a_sweep(users_api: Api, tokens: Tokens) -> None:
    ann_sweep = post(users_api, SWEEPS, "ann", tokens, json=SWEEP).json()
    # bob's grid shares seed 1 with ann's and adds seed 2, his own.
    bob_body = {**SWEEP, "grid": {"training.seed": [1, 2]}}
    bob_sweep = post(users_api, SWEEPS, "bob", tokens, json=bob_body).json()
    shared, bobs = (point["id"] for point in bob_sweep["experiments"])
    assert users_api.experiment(shared)["owner"] == "ann"
    assert users_api.experiment(bobs)["owner"] == "bob"

    refused = post(users_api, f"{SWEEPS}/{ann_sweep['id']}/cancel", "bob", tokens)
    assert refused.status_code == 403
    assert "belongs to 'ann'" in refused.json()["detail"]
    report = post(users_api, f"{SWEEPS}/{ann_sweep['id']}/report", "bob", tokens)
    assert report.status_code == 403
    # bob cancels his sweep: his experiment only; ann's shared one runs on for her.
    cancelled = post(users_api, f"{SWEEPS}/{bob_sweep['id']}/cancel", "bob", tokens)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["kept_experiments"] == [shared]
    assert users_api.experiment(bobs)["status"] == "cancelled"
    assert users_api.experiment(shared)["status"] == "queued"
    for point in ann_sweep["experiments"]:
        assert users_api.experiment(point["id"])["status"] == "queued"
    # An admin cancels all of a sweep, whoever owns its experiments.
    by_admin = post(users_api, f"{SWEEPS}/{bob_sweep['id']}/cancel", "root", tokens)
    assert by_admin.status_code == 200 and by_admin.json()["kept_experiments"] == []
    assert users_api.experiment(shared)["status"] == "cancelled"
    mine = post(users_api, f"{SWEEPS}/{ann_sweep['id']}/cancel", "ann", tokens)
    assert mine.status_code == 200 and mine.json()["status"] == "cancelled"


# --------------------------------------------------------------------------- secrets


def test_tokens_appear_in_no_response_and_no_log_line(
    users_api: Api, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole session of requests, every logger at DEBUG: no token in any response
    (body or header) or log record (message, arguments, traceback)."""
    caplog.set_level(logging.DEBUG)
    responses: list[httpx.Response] = []
    for seed, who in enumerate(("ann", "bob", "root"), start=10):
        sweep = post(users_api, SWEEPS, who, tokens, json={**SWEEP, "name": f"s-{who}"})
        experiment = post(users_api, EXPERIMENTS, who, tokens, json=with_seed(seed))
        responses += [sweep, experiment]
        for path in (f"{EXPERIMENTS}/{experiment.json()['id']}/cancel",
                     f"{SWEEPS}/{sweep.json()['id']}/cancel",
                     f"{SWEEPS}/{sweep.json()['id']}/report"):  # fmt: skip
            responses += [post(users_api, path, other, tokens) for other in ("ann", "bob")]
        for path in (EXPERIMENTS, SWEEPS, f"{SWEEPS}/{sweep.json()['id']}", "/api/v1/queue",
                     "/api/v1/whoami", f"{EXPERIMENTS}/{experiment.json()['id']}/metrics",
                     "/healthz", "/metrics", f"{EXPERIMENTS}/nope"):  # fmt: skip
            responses.append(users_api.client.get(path, headers=tokens.header(who)))
    responses.append(
        users_api.client.post(EXPERIMENTS, json={"bad": 1}, headers=tokens.header("ann"))
    )
    responses.append(users_api.client.get(EXPERIMENTS, headers={"Authorization": "Bearer rb_x"}))
    assert {r.status_code for r in responses} >= {200, 201, 403, 404, 401, 422}
    secrets = [tokens.ann, tokens.bob, tokens.root]
    for response in responses:
        seen = response.text + repr(response.headers)
        assert not any(token in seen for token in secrets), response.request.url
    assert caplog.records, "nothing was logged: the check would be empty"
    assert not any(token in caplog.text for token in secrets)  # formatted, with tracebacks
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + repr(record.__dict__)
        assert not any(token in text for token in secrets), record.name


def test_uvicorn_logs_no_token(embedded_settings: Settings, tmp_path: Path) -> None:
    """The real server at --log-level debug with its access log: the Authorization
    header is never written (neither by uvicorn nor by the app)."""
    tokens = add_users(embedded_settings)
    env = {
        **os.environ,
        "REGBENCH_DATA_DIR": str(embedded_settings.data_dir),
        "REGBENCH_DEFAULT_QUEUE": embedded_settings.default_queue,
    }
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", "0", "--log-level", "debug"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            base = _wait_for_port(server, log)
            with httpx.Client(base_url=base, timeout=30) as client:
                for who in ("ann", "bob"):
                    client.post(EXPERIMENTS, json=SPEC, headers=tokens.header(who))
                    client.get(EXPERIMENTS, headers=tokens.header(who))
                    client.get("/api/v1/whoami", headers=tokens.header(who))
        finally:
            server.terminate()
            server.wait(timeout=30)
    text = log.read_text()
    assert '"POST /api/v1/experiments HTTP/1.1" 201' in text  # the access log was on
    for token in (tokens.ann, tokens.bob, tokens.root):
        assert token not in text


def _wait_for_port(server: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"uvicorn exited:\n{log.read_text()}")
        found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.2)
    raise AssertionError(f"uvicorn did not start:\n{log.read_text()}")


# --------------------------------------------------------------------------- defaults


def test_the_embedded_default_runs_as_the_local_user(
    embedded_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """No user: no token needed, everything is the local user's (an admin), as the API
    says at start-up; a token sent anyway is ignored (it cannot name anyone)."""
    caplog.set_level(logging.INFO, logger="regbench.api")
    for api in start_api(embedded_settings):
        assert "auth: no users, so no tokens: every request runs as the local user 'local'" in (
            caplog.text
        )
        _runs_as_the_local_user(api)


def _runs_as_the_local_user(api: Api) -> None:
    assert api.client.get("/api/v1/whoami").json() == {
        "name": "local", "admin": True, "authenticated": True,
    }  # fmt: skip
    created = api.client.post(EXPERIMENTS, json=SPEC)
    assert created.status_code == 201 and created.json()["owner"] == "local"
    sweep = api.client.post(SWEEPS, json=SWEEP, headers={"Authorization": "Bearer whatever"})
    assert sweep.status_code == 201 and sweep.json()["owner"] == "local"
    old = api.add_experiment(name="from-an-older-version")  # owner "anonymous"
    assert api.experiment(old.id)["owner"] == "anonymous"
    for path in (f"{EXPERIMENTS}/{old.id}/cancel", f"{SWEEPS}/{sweep.json()['id']}/cancel"):
        assert api.client.post(path).status_code == 200


def test_the_local_user_has_the_configured_name(embedded_settings: Settings) -> None:
    for api in start_api(embedded_settings.model_copy(update={"local_user": "lab"})):
        assert api.client.post(EXPERIMENTS, json=SPEC).json()["owner"] == "lab"


def test_the_deprecated_shared_token_acts_as_an_admin(
    any_settings: Settings, tokens: Tokens
) -> None:
    shared = "old-shared-token"
    settings = any_settings.model_copy(update={"api_token": SecretStr(shared)})
    for api in start_api(settings):
        as_admin = {"Authorization": f"Bearer {shared}"}
        anns = api.client.post(EXPERIMENTS, json=SPEC, headers=tokens.header("ann")).json()
        assert anns["owner"] == "ann"
        assert api.client.get(EXPERIMENTS).status_code == 401  # reads need it, as before
        me = api.client.get("/api/v1/whoami", headers=as_admin).json()
        assert me == {"name": "admin", "admin": True, "authenticated": True}
        cancelled = api.client.post(f"{EXPERIMENTS}/{anns['id']}/cancel", headers=as_admin)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        created = api.client.post(EXPERIMENTS, json=SPEC, headers=as_admin, params={"force": True})
        assert created.json()["owner"] == "admin"


def test_each_user_has_a_queue_limit_of_their_own(any_settings: Settings) -> None:
    """REGBENCH_MAX_QUEUED_JOBS_PER_USER counts the caller's own jobs (2 per SPEC): ann's full queue
    refuses ann (429) and not bob; analyses an admin adds count in the owner's queue."""
    tokens = add_users(any_settings)
    limited = any_settings.model_copy(update={"max_queued_jobs_per_user": 4})
    for api in start_api(limited):
        assert post(api, EXPERIMENTS, "ann", tokens, json=with_seed(0)).status_code == 201
        first = post(api, EXPERIMENTS, "ann", tokens, json=with_seed(1))
        assert first.status_code == 201
        refused = post(api, EXPERIMENTS, "ann", tokens, json=with_seed(2))
        assert refused.status_code == 429, refused.text
        assert "'ann' has 4 queued or running jobs" in refused.json()["detail"]
        assert post(api, EXPERIMENTS, "bob", tokens, json=with_seed(3)).status_code == 201
        analyses = [{"kind": "calibration"}]
        added = post(api, f"{EXPERIMENTS}/{first.json()['id']}/analyses", "root", tokens,
                     json=analyses)  # fmt: skip
        assert added.status_code == 429, added.text
        assert "'ann'" in added.json()["detail"]
