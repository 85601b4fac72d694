"""The sweep dashboard (``api.dashboard``): its pages show what the JSON API shows, to
whom the JSON API shows it; everything a user wrote is escaped; where reads need a
token, a page without one answers the sign-in form, and the form's cookie works for
reads only. The browser test is tests/e2e/test_dashboard_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest

from service import users
from service.settings import Settings
from service.tables import Experiment, Sweep
from tests.api.conftest import Api, start_api
from tests.api.test_sweeps import SWEEP, SWEEPS, finish_all, submit

DASHBOARD = "/dashboard"
XSS = "<script>alert('x')</script>"


class _Page(HTMLParser):
    """The page's text, links, images, scripts and the sweep ids its rows name."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.links: list[str] = []
        self.images: list[str] = []
        self.scripts: list[str] = []
        self.sweep_ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        if tag == "img":
            self.images.append(values["src"] or "")
        if tag == "script":
            self.scripts.append(values.get("src") or "INLINE")
        if tag == "tr" and values.get("data-sweep-id"):
            self.sweep_ids.append(values["data-sweep-id"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def page(api: Api, path: str, status: int = 200, **kwargs: Any) -> _Page:
    response = api.client.get(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src" not in response.headers["content-security-policy"]  # default: 'self'
    parsed = _Page()
    parsed.feed(response.text)
    return parsed


def text_of(parsed: _Page) -> str:
    return re.sub(r"\s+", " ", " ".join(parsed.text))


def test_the_sweeps_page_lists_sweeps_with_progress_the_queue_and_workers(api: Api) -> None:
    empty = page(api, DASHBOARD)
    assert "No sweep yet" in text_of(empty) and "No live worker" in text_of(empty)
    sweep = submit(api)
    listed = page(api, DASHBOARD)
    assert listed.sweep_ids == [sweep["id"]]
    assert f"{DASHBOARD}/sweeps/{sweep['id']}" in listed.links
    text = text_of(listed)
    assert "tiny" in text and "0%" in text and "4 queued" in text
    assert api.queue in text  # the queue's row: its jobs by state
    assert listed.scripts == ["/static/dashboard/dashboard.js"]  # no inline script
    assert api.client.get(listed.scripts[0]).status_code == 200


def test_a_sweep_page_has_experiments_results_report_and_mlflow_links(api: Api) -> None:
    sweep = submit(api)
    running = page(api, f"{DASHBOARD}/sweeps/{sweep['id']}")
    text = text_of(running)
    assert "queued" in text and "built when the sweep finishes" in text
    assert "No metric yet" in text
    for point in sweep["experiments"]:
        assert f"/api/v1/experiments/{point['id']}" in running.links

    metrics = {
        p["id"]: {"test_accuracy": 0.5 + 0.1 * i} for i, p in enumerate(sweep["experiments"])
    }
    finish_all(api, sweep, metrics)
    first = sweep["experiments"][0]["id"]
    with api.database.session() as session:
        experiment = session.get(Experiment, first)
        assert experiment is not None
        experiment.mlflow_experiment_id, experiment.mlflow_run_id = "7", "abc123"
        experiment.jobs[0].device = "cuda:3"
        session.commit()
    assert api.client.post(f"{SWEEPS}/{sweep['id']}/report").status_code == 200

    done = page(api, f"{DASHBOARD}/sweeps/{sweep['id']}")
    text = text_of(done)
    assert "succeeded" in text and "cuda:3" in text and "2/2 jobs" in text
    assert "test_accuracy" in text and "regularizers=l2(weight=0.001)" in text
    assert "0.55 ± 0.071" in text  # seeds 0 and 1 of regularizers=none: 0.5 and 0.6
    assert "http://mlflow.example:5000/#/experiments/7/runs/abc123" in done.links
    report = f"/api/v1/sweeps/{sweep['id']}/report/report.png"
    assert done.images[0] == report and report in done.links
    png = api.client.get(done.images[0])
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_user_text_is_escaped_everywhere(api: Api) -> None:
    """The API refuses such names now, but a configuration label carries free text (a
    grid over ``description``), and rows recorded before names were checked may not."""
    body = {**SWEEP, "grid": {"description": [XSS], "training.seed": [0]}}
    sweep = submit(api, body)
    with api.database.session() as session:
        row = session.get(Sweep, sweep["id"])
        assert row is not None
        row.name = f"sweep {XSS}"
        session.commit()
    for path in (DASHBOARD, f"{DASHBOARD}/sweeps/{sweep['id']}"):
        response = api.client.get(path)
        assert response.status_code == 200
        assert "<script>alert" not in response.text
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in response.text
        parsed = _Page()
        parsed.feed(response.text)
        assert parsed.scripts == ["/static/dashboard/dashboard.js"]
    shown = text_of(page(api, f"{DASHBOARD}/sweeps/{sweep['id']}"))
    assert f"sweep {XSS}" in shown and f"description={XSS}" in shown  # as text


def test_an_unknown_sweep_is_a_404_page(api: Api) -> None:
    assert "no sweep with id" in text_of(page(api, f"{DASHBOARD}/sweeps/nope", 404))


def test_signing_in_where_no_token_is_needed_just_opens_the_dashboard(api: Api) -> None:
    response = api.client.post(f"{DASHBOARD}/login", data={"token": "x"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == DASHBOARD
    assert "set-cookie" not in response.headers


# --------------------------------------------------------------------------- tokens


@pytest.fixture
def users_api(embedded_settings: Settings) -> Iterator[tuple[Api, dict[str, str]]]:
    """Reads need a token (REGBENCH_AUTH_READS); alice and bob are users, bob an admin."""
    settings = embedded_settings.model_copy(update={"auth_reads": True})
    for api in start_api(settings):
        with api.database.session() as session:
            tokens = {
                "alice": users.add_user(session, "alice"),
                "bob": users.add_user(session, "bob", admin=True),
            }
            session.commit()
        yield api, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_a_token_the_dashboard_answers_the_sign_in_form(
    users_api: tuple[Api, dict[str, str]],
) -> None:
    api, tokens = users_api
    sweep = submit_as(api, tokens["alice"])
    for path in (DASHBOARD, f"{DASHBOARD}/sweeps/{sweep['id']}"):
        refused = api.client.get(path)
        assert refused.status_code == 401
        assert 'name="token"' in refused.text and "missing API token" in refused.text
        assert sweep["id"] not in refused.text and "tiny" not in refused.text
        wrong = api.client.get(path, cookies={"regbench_token": "rb_wrong"})
        assert wrong.status_code == 401 and "wrong API token" in wrong.text
        assert api.client.get(path, headers=bearer(tokens["alice"])).status_code == 200


def submit_as(api: Api, token: str) -> dict[str, Any]:
    response = api.client.post(SWEEPS, json=SWEEP, headers=bearer(token))
    assert response.status_code == 201, response.text
    return response.json()


def test_signing_in_sets_a_strict_httponly_cookie_good_for_reads_only(
    users_api: tuple[Api, dict[str, str]],
) -> None:
    api, tokens = users_api
    client = api.client
    assert client.post(f"{DASHBOARD}/login", data={"token": "rb_wrong"}).status_code == 401
    crowded = {f"field{i}": "x" for i in range(10)}
    assert client.post(f"{DASHBOARD}/login", data=crowded).status_code == 401
    foreign = client.post(
        f"{DASHBOARD}/login", data={"token": tokens["alice"]}, headers={"Origin": "https://evil"}
    )
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers

    signed = client.post(
        f"{DASHBOARD}/login", data={"token": tokens["alice"]}, follow_redirects=False
    )
    assert signed.status_code == 303 and signed.headers["location"] == DASHBOARD
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith(f"regbench_token={tokens['alice']};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here; over https it is Secure
    assert tokens["alice"] not in signed.text

    client.cookies.set("regbench_token", tokens["alice"])
    try:
        home = page(api, DASHBOARD)
        assert "alice" in text_of(home) and "sign out" in text_of(home)
        assert client.get("/api/v1/whoami").json()["name"] == "alice"  # reads take the cookie
        refused = client.post(SWEEPS, json=SWEEP)  # writes never do: no CSRF
        assert refused.status_code == 401 and "needs an API token" in refused.json()["detail"]
        out = client.post(f"{DASHBOARD}/logout", follow_redirects=False)
        assert out.status_code == 303 and 'regbench_token=""' in out.headers["set-cookie"]
    finally:
        client.cookies.clear()


def test_each_user_sees_on_the_dashboard_what_the_json_api_shows_them(
    users_api: tuple[Api, dict[str, str]],
) -> None:
    """Reads are not scoped by owner in the JSON API (anyone allowed to read reads every
    sweep): the dashboard shows each user the same sweeps, and nobody's token."""
    api, tokens = users_api
    alices = submit_as(api, tokens["alice"])
    bobs = api.client.post(
        SWEEPS,
        json={**SWEEP, "name": "bobs", "grid": {"training.seed": [5]}},
        headers=bearer(tokens["bob"]),
    ).json()
    for name, token in tokens.items():
        listed = api.client.get(SWEEPS, headers=bearer(token)).json()["data"]
        shown = page(api, DASHBOARD, headers=bearer(token))
        assert shown.sweep_ids == [s["id"] for s in listed], name
        assert set(shown.sweep_ids) == {alices["id"], bobs["id"]}
        for sweep_id in shown.sweep_ids:
            html = api.client.get(f"{DASHBOARD}/sweeps/{sweep_id}", headers=bearer(token)).text
            assert not any(t in html for t in tokens.values())
