"""schemathesis over every operation of the real app, on both stores: no input gives a 5xx,
and every answer (status code, content type, body) is one the OpenAPI document declares.

The schema is the app's own ``/openapi.json`` (``schemathesis.openapi.from_asgi``). Each
operation gets its coverage cases (boundaries and invalid values) and ``FUZZ_EXAMPLES``
generated requests, valid and invalid (200 in CI, 50 elsewhere;
``REGBENCH_FUZZ_EXAMPLES`` overrides), from a fixed seed: the same requests on every run.
Path ids are drawn from generated strings and from the rows recorded before the run
(experiments queued, running, succeeded with an MLflow run, failed, cancelled; a sweep),
so cancel, analyses, metrics, artifacts, results and reports meet real rows. Half of the
submissions get real component names (the schema cannot list them), so generated names,
training fields and grid seeds reach the job store. On the cluster store a token is
required for reads and writes, and most requests carry the token of a plain user who owns
the sweep but not the experiments recorded before the run (403 on those). Jobs that
submissions enqueue go to the test's own queue, which no worker reads.

A failure prints the request that reproduces it (``curl``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from starlette.types import Receive, Scope, Send

from api.app import create_app
from regcore.spec import ANALYSES, ExperimentSpec
from service import jobstore, users
from service.settings import Settings
from service.tables import Experiment, JobState, utcnow
from service.tracking import MlflowTracker
from tests.api.conftest import REDIS_DB, SPEC, Api, _data_dir, start_api
from tests.conftest import ensure_redis, fresh_postgres_database
from tests.reliability import write_record

# The token requests carry: a user's on the cluster store (set by the fixture).
TOKEN: dict[str, str] = {"token": "no-user-needs-one"}
# Generated requests per operation, on top of its examples and coverage cases.
FUZZ_EXAMPLES = int(
    os.environ.get("REGBENCH_FUZZ_EXAMPLES", "200" if os.environ.get("CI") == "true" else "50")
)
SEED = 20261130

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "suppress-health-check": ["too_slow"],  # a busy CI machine draws slowly; not a failure
        "generation": {
            "mode": "all",  # valid and invalid requests
            "max-examples": FUZZ_EXAMPLES,
            "database": "none",  # no replay of earlier runs' failures: the same run every time
        },
        "phases": {"stateful": {"enabled": False}},
        "operations": [
            {  # each 201 builds a report (a figure, a page, an MLflow run): fewer suffice
                "include-name": "POST /api/v1/sweeps/{sweep_id}/report",
                "generation": {"max-examples": max(FUZZ_EXAMPLES // 10, 10)},
            }
        ],
        "checks": {
            "enabled": False,  # only these: the others judge API design, not failures
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
        },
    }
)


class Lifespanless:
    """The app without its lifespan: the test's ``TestClient`` runs start-up and shutdown
    once, and schemathesis only sends requests (it would otherwise keep the app started
    until the process exits)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("started by the test")  # an app without lifespan support
        await self.app(scope, receive, send)


def logged_run(settings: Settings, tmp_dir: Path) -> str:
    """An MLflow run with metrics (one of them NaN) and artifacts, as a worker logs them."""
    tracker = MlflowTracker(
        settings.tracking_uri,
        settings.mlflow_experiment,
        artifact_location=settings.default_artifact_location,
    )
    for epoch in (1, 2):
        tracker.log_metrics({"train/loss": 1.0 / epoch, "diverged": float("nan")}, epoch)
    (tmp_dir / "checkpoints").mkdir()
    (tmp_dir / "checkpoints" / "model.pt").write_bytes(bytes(range(256)))
    (tmp_dir / "history.json").write_text('{"epochs": 2}')
    tracker.log_artifact(tmp_dir / "checkpoints" / "model.pt", "checkpoints")
    tracker.log_artifact(tmp_dir / "history.json")
    return tracker.run_id


def record_rows(api: Api, tmp_dir: Path) -> dict[str, list[str]]:
    """Experiments in every state (the succeeded one with an MLflow run) and a sweep,
    through the API and the job store."""
    experiments = []
    for seed, final in enumerate(
        [None, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]
    ):
        experiment = api.add_experiment(training={"epochs": 1, "seed": seed})
        experiments.append(experiment.id)
        if final is None:
            continue
        with api.database.session() as session:
            train = jobstore.train_job(experiment)
            claimed = jobstore.claim(
                session, train.id, worker="w1", device="cpu", stale_before=utcnow(), max_attempts=3
            )
            assert claimed is not None
            if final != JobState.RUNNING:
                metrics = {"test_accuracy": 0.5} if final == JobState.SUCCEEDED else None
                jobstore.finish(session, train.id, "w1", final, error="boom", metrics=metrics)
            if final == JobState.SUCCEEDED:
                jobstore.set_mlflow_run(session, train.id, logged_run(api.settings, tmp_dir))
            session.commit()
    sweep = api.client.post(
        "/api/v1/sweeps",
        json={"name": "fuzz", "base": SPEC, "grid": {"training.seed": [0, 1]}},
        headers=api.client.headers,
    )
    assert sweep.status_code == 201, sweep.text
    sweep_body = sweep.json()
    with api.database.session() as session:  # one of its experiments finished
        experiment = session.get(Experiment, sweep_body["experiments"][0]["id"])
        assert experiment is not None
        experiment.metrics = {"test_accuracy": 0.75}
        for job in experiment.jobs:
            job.state, job.progress, job.finished_at = JobState.SUCCEEDED, 1.0, utcnow()
        session.commit()
    return {"experiment_id": experiments, "sweep_id": [sweep_body["id"]]}


# The rows of the store under test, by path parameter (read while requests are drawn).
RECORDED: dict[str, list[str]] = {}
# Requests sent on the store under test, by operation, and the answers that were 5xx or
# failed a check: the README's "inputs tried" (written when the store's run ends clean).
TRIED: dict[str, int] = {}
BAD: dict[str, int] = {"server_errors": 0, "failed": 0}


@pytest.fixture(scope="module")
def module_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this module's cluster app, dropped afterwards."""
    with fresh_postgres_database("regbench_fuzz") as url:
        yield url


@pytest.fixture(scope="module", params=["embedded", "cluster"])
def fuzz_api(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_template: Path,
    reliability_out: Path,
) -> Iterator[Api]:
    """The app on one store, started once for all operations; on the cluster store the
    API token is required."""
    queue = f"fuzz-{uuid.uuid4().hex[:12]}"
    data_dir = _data_dir(tmp_path_factory.mktemp(f"fuzz-{request.param}"), mlflow_template)
    common: dict[str, Any] = {
        "data_dir": data_dir, "mlflow_tracking_uri": None, "default_queue": queue,
        "broker_timeout_s": 1.0, "mlflow_ui_url": "http://mlflow.example:5000/",
    }  # fmt: skip
    if request.param == "embedded":
        settings = Settings(**common, database_url=None, broker_url=None)
    else:
        ensure_redis()
        settings = Settings(
            **common,
            database_url=request.getfixturevalue("module_postgres_url"),
            broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
            auth_reads=True,
        )
    try:
        for api in start_api(settings):
            if request.param == "cluster":  # a plain user: others' rows answer 403
                with api.database.session() as session:
                    TOKEN["token"] = users.add_user(session, "fuzzer")
                    session.commit()
                api.client.headers["Authorization"] = f"Bearer {TOKEN['token']}"
            RECORDED.update(record_rows(api, tmp_path_factory.mktemp("artifacts")))
            TRIED.clear()
            BAD.update(server_errors=0, failed=0)
            yield api
        if TRIED and not BAD["failed"]:
            write_record(
                reliability_out,
                f"inputs-{request.param}",
                {
                    "kind": "inputs",
                    "store": request.param,
                    "operations": len(TRIED),
                    "examples": sum(TRIED.values()),
                    "server_errors": BAD["server_errors"],
                },
            )
    finally:
        RECORDED.clear()
        TOKEN["token"] = "no-user-needs-one"
        if settings.broker_url is not None:
            with redis.Redis.from_url(settings.broker_url) as client:
                keys = list(client.scan_iter(match=f"*{queue}*"))
                if keys:
                    client.delete(*keys)


# The document as the app serves it (the same for both stores; no start-up needed).
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", Lifespanless(create_app(Settings())), config=CONFIG
)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    """A generated id, or one of the recorded rows (drawn like the rest: from the seed)."""
    if not path_parameters:
        return st.just(path_parameters)
    choices = [
        st.sampled_from(RECORDED[name]).map(lambda value, name=name: {name: value})
        for name in path_parameters
        if RECORDED.get(name)
    ]
    if not choices:
        return st.just(path_parameters)
    return st.one_of(st.just({}), *choices).map(lambda picked: {**path_parameters, **picked})


@schema.hook
def flatmap_headers(context: Any, headers: dict[str, Any] | None) -> Any:
    """Mostly the user's token (where no user exists, any token is ignored), sometimes the
    generated header: a 401 must be a declared answer too. Read when drawn, like ids."""
    generated = headers or {}
    good = {**generated, "authorization": f"Bearer {TOKEN['token']}"}
    return st.sampled_from([True, True, True, False]).map(lambda use: good if use else generated)


def with_components(spec: Any) -> Any:
    """A generated spec with components that exist (names are free strings in the schema,
    checked against the registries), so generated names, training and resources reach
    the job store instead of stopping at an unknown dataset."""
    if not isinstance(spec, dict):
        return spec
    real = {key: SPEC[key] for key in ("dataset", "model", "analyses")}
    return {**spec, **real, "regularizers": []}


def valid_kinds(analyses: Any) -> st.SearchStrategy[Any]:
    if not isinstance(analyses, list):
        return st.just(analyses)
    kinds = st.tuples(*[st.sampled_from(ANALYSES.names()) for _ in analyses])
    return kinds.map(
        lambda drawn: [
            {**item, "kind": kind} if isinstance(item, dict) else item
            for item, kind in zip(analyses, drawn, strict=True)
        ]
    )


def sweep_with_components(document: Any) -> st.SearchStrategy[Any]:
    """A base of a spec's fields with real components; the generated grid or seeds."""
    if not isinstance(document, dict):
        return st.just(document)
    base = document.get("base")
    if isinstance(base, dict):  # any object in the schema: keep a spec's fields
        base = with_components({k: v for k, v in base.items() if k in ExperimentSpec.model_fields})
    seeds = st.lists(st.integers(min_value=0), min_size=1, max_size=3)
    grids = st.one_of(
        st.just(document.get("grid")), st.fixed_dictionaries({"training.seed": seeds})
    )
    return grids.map(lambda grid: {**document, "base": base, "grid": grid})


SUBMISSIONS = {
    "POST /api/v1/experiments": lambda body: st.just(with_components(body)),
    "POST /api/v1/sweeps": sweep_with_components,
    "POST /api/v1/experiments/{experiment_id}/analyses": valid_kinds,
}


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    """The generated body, or the same with real component names (half of the draws)."""
    fix = SUBMISSIONS.get(context.operation.label)
    return st.just(body) if fix is None else st.one_of(st.just(body), fix(body))


@schema.parametrize()
def test_no_server_error_and_every_answer_is_declared(case: Any, fuzz_api: Api) -> None:
    TRIED[case.operation.label] = TRIED.get(case.operation.label, 0) + 1
    try:
        response = case.call_and_validate(app=Lifespanless(fuzz_api.app))
    except BaseException:
        BAD["failed"] += 1
        raise
    BAD["server_errors"] += int(response.status_code >= 500)
