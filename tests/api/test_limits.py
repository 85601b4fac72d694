"""Limits on the work one request and one user may ask for, and inputs that must be refused
with a 4xx naming the field (never a 500, never stored): jobs per request, analyses per
spec and per call, queued jobs per user, body size and nesting, non-finite and
out-of-range numbers, NUL and lone surrogates, offsets past the database's integers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from service import jobstore, limits
from service.settings import Settings
from service.tables import Experiment, Job, JobState, Sweep
from tests.api.conftest import SPEC, Api, broker_job_ids, start_api

EXPERIMENTS = "/api/v1/experiments"
SWEEPS = "/api/v1/sweeps"
ANALYSES = [{"kind": "calibration"}, {"kind": "geometry", "samples": 8}]
SWEEP: dict[str, Any] = {
    "name": "limits",
    "base": {**SPEC, "analyses": ANALYSES},  # 3 jobs per point
    "grid": {"training.seed": [0, 1, 2, 3]},  # 12 jobs in all
}


def limited(settings: Settings, **limits_: Any) -> Iterator[Api]:
    """The app with these settings changed."""
    yield from start_api(settings.model_copy(update=limits_))


@pytest.fixture(params=["embedded", "cluster"])
def store(request: pytest.FixtureRequest) -> Settings:
    return request.getfixturevalue(f"{request.param}_settings")


def post_json(api: Api, path: str, text: str) -> Any:
    """POST a JSON text as written (NaN, Infinity, escapes that ``json=`` cannot send)."""
    return api.client.post(
        path, content=text.encode(), headers={"content-type": "application/json"}
    )


def nothing_recorded(api: Api) -> None:
    with api.database.session() as session:
        assert session.query(Experiment).count() == 0
        assert session.query(Sweep).count() == 0
    assert broker_job_ids(api.settings, api.queue) == []


def only_error(response: Any) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    return error


# --------------------------------------------------------------------------- jobs per request


def test_a_sweep_over_the_jobs_limit_is_422_naming_the_limit(store: Settings) -> None:
    for api in limited(store, max_jobs_per_request=11):
        error = only_error(api.client.post(SWEEPS, json=SWEEP))
        assert error["loc"] == ["body", "grid"]
        assert "12 jobs" in error["msg"] and "limit of 11" in error["msg"]
        assert "REGBENCH_MAX_JOBS_PER_REQUEST" in error["msg"]
        nothing_recorded(api)
    for api in limited(store, max_jobs_per_request=12):
        assert api.client.post(SWEEPS, json=SWEEP).status_code == 201


def test_the_default_jobs_limit_refuses_a_small_body_asking_for_many_jobs(api: Api) -> None:
    """A few kilobytes asked for 1,000 points x (train + 15 analyses) = 16,000 jobs."""
    analyses = [{"kind": "plots", "seed": seed} for seed in range(15)]
    body = {"base": {**SPEC, "analyses": analyses}, "grid": {"training.seed": list(range(1000))}}
    assert len(json.dumps(body)) < 10_000
    error = only_error(api.client.post(SWEEPS, json=body))
    assert error["loc"] == ["body", "grid"] and "16000 jobs" in error["msg"]
    assert f"limit of {api.settings.max_jobs_per_request}" in error["msg"]
    nothing_recorded(api)


def test_analyses_per_spec_over_the_limit_are_422_in_a_spec_a_sweep_and_a_call(
    api: Api,
) -> None:
    """The defect: 100 analyses per point made 101 jobs per grid point, 20,000 analyses
    in one call 20,000 jobs; the default limit stops both."""
    limit = api.settings.max_analyses_per_spec
    many = [{"kind": "plots"}] * (limit + 1)
    error = only_error(api.client.post(EXPERIMENTS, json={**SPEC, "analyses": many}))
    assert error["loc"] == ["body", "analyses"]
    assert f"limit of {limit}" in error["msg"] and "REGBENCH_MAX_ANALYSES_PER_SPEC" in error["msg"]
    sweep = {"base": {**SPEC, "analyses": many}, "grid": {"training.seed": list(range(10))}}
    errors = api.client.post(SWEEPS, json=sweep).json()["detail"]
    assert [e["loc"] for e in errors] == [["body", "base", "analyses"]]
    gridded = {"base": SPEC, "grid": {"analyses": [[], many]}}
    errors = api.client.post(SWEEPS, json=gridded).json()["detail"]
    assert [e["loc"] for e in errors] == [["body", "grid", "analyses", 1]]
    nothing_recorded(api)
    experiment = api.add_experiment(analyses=[])
    response = api.client.post(f"{EXPERIMENTS}/{experiment.id}/analyses", json=many)
    error = only_error(response)
    assert error["loc"] == ["body"] and f"limit of {limit}" in error["msg"]
    assert len(api.experiment(experiment.id)["jobs"]) == 1
    exactly = api.client.post(f"{EXPERIMENTS}/{experiment.id}/analyses", json=many[:limit])
    assert exactly.status_code == 201


def test_the_schema_states_the_analyses_ceiling(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["ExperimentSpec"]["properties"]["analyses"]["maxItems"] >= (
        api.settings.max_analyses_per_spec
    )


# --------------------------------------------------------------------------- per user


def test_queued_jobs_per_user_over_the_limit_are_429(store: Settings) -> None:
    spec = {**SPEC, "analyses": ANALYSES}  # 3 jobs
    for api in limited(store, max_queued_jobs_per_user=7):
        first = api.client.post(EXPERIMENTS, json=spec)
        second = api.client.post(EXPERIMENTS, json={**spec, "training": {"seed": 1}})
        assert (first.status_code, second.status_code) == (201, 201)
        full = api.client.post(EXPERIMENTS, json={**spec, "training": {"seed": 2}})
        assert full.status_code == 429, full.text
        detail = full.json()["detail"]
        assert "6 queued or running" in detail and "limit of 7" in detail
        assert "REGBENCH_MAX_QUEUED_JOBS_PER_USER" in detail
        assert full.headers["Retry-After"]
        assert api.client.post(SWEEPS, json=SWEEP).status_code == 429
        # An identical spec adds nothing: not refused.
        assert api.client.post(EXPERIMENTS, json=spec).status_code == 200
        analyses = api.client.post(f"{EXPERIMENTS}/{first.json()['id']}/analyses", json=ANALYSES)
        assert analyses.status_code == 429
        # Cancelled work no longer counts.
        assert api.client.post(f"{EXPERIMENTS}/{first.json()['id']}/cancel").status_code == 200
        again = api.client.post(EXPERIMENTS, json={**spec, "training": {"seed": 2}})
        assert again.status_code == 201
        with api.database.session() as session:
            assert session.query(Experiment).count() == 3


def test_active_jobs_counts_queued_and_running_jobs_of_one_owner(api: Api) -> None:
    mine = api.add_experiment(analyses=ANALYSES)  # 3 jobs, owner anonymous
    with api.database.session() as session:
        other = jobstore.submit_experiment(
            session,
            jobstore.ExperimentSpec.model_validate(SPEC),
            owner="someone",
            force=True,
        )
        session.commit()
        jobs = {job.kind: job for job in session.get(Experiment, mine.id).jobs}  # type: ignore[union-attr]
        jobs["train"].state = JobState.RUNNING
        jobs["geometry"].state = JobState.FAILED
        session.commit()
        assert limits.active_jobs(session, "anonymous") == 2
        assert limits.active_jobs(session) == 2  # the current single owner
        assert limits.active_jobs(session, "someone") == len(other.experiment.jobs) == 2
        assert limits.active_jobs(session, "nobody") == 0
        assert session.query(Job).count() == 5


# --------------------------------------------------------------------------- the body


def test_the_body_limit_is_a_setting(store: Settings) -> None:
    for api in limited(store, max_body_bytes=2000):
        body = {**SPEC, "description": "x" * 2000}
        response = api.client.post(EXPERIMENTS, json=body)
        assert response.status_code == 413
        assert "2000 bytes" in response.json()["detail"]
        assert "REGBENCH_MAX_BODY_BYTES" in response.json()["detail"]
        assert api.client.post(EXPERIMENTS, json=SPEC).status_code == 201


@pytest.mark.parametrize("depth", [900, 100_000])
def test_a_grid_value_nested_deep_is_422(any_api: Api, depth: int) -> None:
    value = "[" * depth + "0" + "]" * depth
    text = json.dumps({"base": SPEC, "grid": {"training.seed": ["VALUE"]}})
    response = post_json(any_api, SWEEPS, text.replace('"VALUE"', value))
    error = only_error(response)
    if depth < 990:  # within what Python's json reads: the path to the deep value
        assert error["loc"][:4] == ["body", "grid", "training.seed", 0]
    else:  # deeper than Python's json reads (a RecursionError once): the body
        assert error["loc"] == ["body"]
    assert f"{any_api.settings.max_json_depth} levels" in error["msg"]
    nothing_recorded(any_api)


def test_a_spec_nested_deep_is_422(api: Api) -> None:
    deep = "[" * 900 + "]" * 900
    text = json.dumps({**SPEC, "regularizers": [{"name": "weight_noise", "layers": "DEEP"}]})
    error = only_error(post_json(api, EXPERIMENTS, text.replace('"DEEP"', deep)))
    assert error["loc"][:5] == ["body", "regularizers", 0, "layers", 0]


# --------------------------------------------------------------------------- numbers


NOT_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize(
    ("path", "loc"),
    [
        (EXPERIMENTS, ["body", "training", "lr"]),  # fails validation: its 422 echoed the value
        (EXPERIMENTS, ["body", "training", "weight_decay"]),  # passed: PostgreSQL refused it
        (EXPERIMENTS, ["body", "regularizers", 0, "weight"]),
        (EXPERIMENTS, ["body", "analyses", 0, "eps", 1]),
        (SWEEPS, ["body", "grid", "training.lr", 1]),
        (SWEEPS, ["body", "base", "training", "lr"]),
    ],
)
def test_non_finite_numbers_are_422_naming_the_field(
    any_api: Api, path: str, loc: list[Any], value: str
) -> None:
    spec = {
        **SPEC,
        "training": {"epochs": 1, "lr": "VALUE" if loc[-1] == "lr" else 0.1},
        "regularizers": [{"name": "l2", "weight": "VALUE" if loc[-1] == "weight" else 0.1}],
        "analyses": [{"kind": "attack", "eps": [0.0, "VALUE" if loc[-1] == 1 else 0.1]}],
    }
    if loc[-1] == "weight_decay":
        spec["training"]["weight_decay"] = "VALUE"
    body: dict[str, Any] = spec
    if path == SWEEPS:
        grid = {"training.lr": [0.1, "VALUE"]} if loc[1] == "grid" else {"training.seed": [0]}
        body = {"base": spec, "grid": grid}
    response = post_json(any_api, path, json.dumps(body).replace('"VALUE"', value))
    error = only_error(response)
    assert error["loc"] == loc
    assert "finite" in error["msg"]
    nothing_recorded(any_api)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**31),
        ("seed", 10**30),
        ("seed", 1e30),
        ("seed", 2**64),
        ("epochs", 10**12),
        ("batch_size", 2**40),
        ("eval_batch_size", 2**40),
        ("lr", 1e30),
        ("weight_decay", 1e30),
        ("momentum", -0.5),
    ],
)
def test_out_of_range_training_numbers_are_422(any_api: Api, field: str, value: Any) -> None:
    """Seeds of 2**31 or more broke PostgreSQL's integer column (500) and SQLite stored
    1e30; every number has a stated range."""
    spec = {**SPEC, "training": {"epochs": 1, field: value}}
    error = only_error(any_api.client.post(EXPERIMENTS, json=spec))
    assert error["loc"] == ["body", "training", field]
    sweep = {"base": SPEC, "grid": {f"training.{field}": [value]}}
    error = only_error(any_api.client.post(SWEEPS, json=sweep))
    assert error["loc"] == ["body", "grid", f"training.{field}", 0]
    nothing_recorded(any_api)


def test_the_largest_seed_is_accepted_on_both_stores(any_api: Api) -> None:
    sweep = {"base": SPEC, "grid": {"training.seed": [2**31 - 1]}}
    response = any_api.client.post(SWEEPS, json=sweep)
    assert response.status_code == 201, response.text
    assert response.json()["experiments"][0]["seed"] == 2**31 - 1


def test_the_schema_states_every_numeric_range(api: Api) -> None:
    """Every number of the spec's own sections, and of every component's params in the
    catalog, has both bounds in the JSON schema (and floats are finite)."""
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    unbounded = [
        f"{name}.{field}"
        for name in ("TrainingSpec", "ResourcesSpec", "EarlyStopping", "StepSchedule")
        for field, prop in schemas[name]["properties"].items()
        if _numeric(prop) and not _bounded(prop)
    ]
    catalog = api.client.get("/api/v1/catalog").json()
    for kind, entries in catalog.items():
        for entry in entries:
            schema = entry.get("params") or {}
            for field, prop in schema.get("properties", {}).items():
                if _numeric(prop) and not _bounded(prop):
                    unbounded.append(f"{kind}.{entry['name']}.{field}")
    assert unbounded == []


def _numbers(prop: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for option in prop.get("anyOf", [prop]):
        if option.get("type") in ("integer", "number"):
            found.append(option)
        elif option.get("type") == "array":
            items = option.get("items") or option.get("prefixItems") or {}
            for item in items if isinstance(items, list) else [items]:
                found += _numbers(item)
    return found


def _numeric(prop: dict[str, Any]) -> bool:
    return bool(_numbers(prop))


def _bounded(prop: dict[str, Any]) -> bool:
    return all(
        "enum" in n
        or "const" in n
        or (
            ("minimum" in n or "exclusiveMinimum" in n)
            and ("maximum" in n or "exclusiveMaximum" in n)
        )
        for n in _numbers(prop)
    )


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize("text", ["\\ud800", "x\\udfffy", "\\u0000", "a\\u0000b"])
@pytest.mark.parametrize(
    ("path", "loc"),
    [
        (EXPERIMENTS, ["body", "name"]),
        (EXPERIMENTS, ["body", "description"]),
        (EXPERIMENTS, ["body", "regularizers", 0, "layers", 0]),
        (SWEEPS, ["body", "name"]),
        (SWEEPS, ["body", "grid", "description", 0]),
    ],
)
def test_nul_and_lone_surrogates_are_422_naming_the_field(
    any_api: Api, path: str, loc: list[Any], text: str
) -> None:
    spec = {**SPEC, "regularizers": [{"name": "weight_noise", "layers": ["fc"]}]}
    body: dict[str, Any] = spec
    if path == SWEEPS:
        body = {"name": "s", "base": spec, "grid": {"description": ["ok"]}}
    node: Any = body
    for key in loc[1:-1]:
        node = node[key]
    node[loc[-1]] = "TEXT"
    if loc[-1] == 0 and loc[-2] == "description":
        node[0] = "TEXT"
    response = post_json(any_api, path, json.dumps(body).replace("TEXT", text))
    error = only_error(response)
    assert error["loc"] == loc
    nothing_recorded(any_api)


def test_a_surrogate_pair_is_fine(api: Api) -> None:
    text = json.dumps({**SPEC, "description": "DESC"}).replace("DESC", "\\ud83d\\ude00 ok")
    assert post_json(api, EXPERIMENTS, text).status_code == 201


# --------------------------------------------------------------------------- pages


@pytest.mark.parametrize("path", [EXPERIMENTS, SWEEPS])
@pytest.mark.parametrize("offset", [2**63 - 1, 2**63, 2**64, 10**30])
def test_offsets_past_the_database_integers_are_422(any_api: Api, path: str, offset: int) -> None:
    response = any_api.client.get(path, params={"offset": offset})
    error = only_error(response)
    assert error["loc"] == ["query", "offset"]
    assert any_api.client.get(path, params={"offset": limits.MAX_OFFSET}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", f"{EXPERIMENTS}?sweep=%00", 422),
        ("get", f"{EXPERIMENTS}?sweep=%ED%A0%80", 422),
        ("get", f"{EXPERIMENTS}/%00", 404),
        ("get", f"{EXPERIMENTS}/a%00b/metrics", 404),
        ("post", f"{EXPERIMENTS}/a%00b/cancel", 404),
        ("get", f"{SWEEPS}/%00", 404),
        ("get", f"{SWEEPS}/a%00b/results", 404),
        ("post", f"{SWEEPS}/a%00b/cancel", 404),
    ],
)
def test_ids_with_nul_name_nothing(any_api: Api, method: str, path: str, status: int) -> None:
    """PostgreSQL refuses NUL in text with an error: such an id or filter never reaches it."""
    assert getattr(any_api.client, method)(path).status_code == status
