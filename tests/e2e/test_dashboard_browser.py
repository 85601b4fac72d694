"""The sweep dashboard in a real headless browser (Playwright driving Debian's chromium):
on a live stack (the API under uvicorn, a Celery worker), the page shows a sweep submitted
here and updates in place as its jobs finish, down to the report's figure.

Playwright cannot download its own browser here (no CDN): it drives the system's
chromium (``apt-get install chromium``; ``make test`` installs it when it can). Without
one this test skips with the reason, and fails in CI (``CI=true``)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_http_to_worker import start_api
from tests.worker.conftest import Backend

HOW_TO_INSTALL = (
    "install Debian's chromium (`apt-get install chromium`, which `make test` runs when it "
    "can: as root or with `sudo -n`), or set REGBENCH_CHROMIUM to a Chromium binary; and "
    "Playwright's Python package (`pip install -e '.[dev]'`)"
)
SWEEP: dict[str, Any] = {
    "name": "browser-digits",
    "base": {
        "name": "browser",
        "dataset": {"name": "digits", "size": 8, "train_size": 120, "test_size": 60},
        "model": {"name": "mlp", "hidden": [16]},
        "training": {"epochs": 1, "batch_size": 40, "device": "cpu"},
    },
    "grid": {"training.seed": [0, 1]},
}
NEEDED = {"document", "script", "stylesheet", "font", "fetch", "xhr"}  # what a page needs to work
FINISH_S = 240  # the worker's start and two tiny jobs on 2 shared cores, with room


def chromium_executable() -> str:
    """The system's chromium, or a skip (a failure in CI) saying how to install it."""
    path = (
        os.environ.get("REGBENCH_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    problem = None if path else "no chromium on PATH"
    try:
        import playwright.sync_api  # noqa: F401 (only whether it is installed)
    except ImportError:
        problem = "the playwright package is not installed"
    if problem is None:
        assert path is not None
        return path
    message = f"the dashboard's browser test needs a browser: {problem}; {HOW_TO_INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def browser_page() -> Iterator[Any]:
    executable = chromium_executable()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: chromium refuses to start as root (CI runs as root) with its sandbox.
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.mark.slow
def test_the_dashboard_shows_a_sweep_and_follows_its_jobs_in_the_browser(
    embedded: Backend, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    api = start_api(embedded)
    base = str(api.base_url).rstrip("/")
    submitted = api.post("/api/v1/sweeps", json=SWEEP)
    assert submitted.status_code == 201, submitted.text
    sweep_id = submitted.json()["id"]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    # The sweeps page lists it, queued: no worker runs yet.
    page.goto(f"{base}/dashboard")
    row = page.locator(f'tr[data-sweep-id="{sweep_id}"]')
    expect(row).to_contain_text("browser-digits")
    expect(row.locator(".sweep-status")).to_have_text("queued")
    expect(page.locator("#no-workers")).to_be_visible()

    # Its page: two queued experiments, no result, no report.
    row.get_by_role("link", name="browser-digits").click()
    expect(page).to_have_url(f"{base}/dashboard/sweeps/{sweep_id}")
    expect(page.locator("#sweep-status")).to_have_text("queued")
    expect(page.locator("#experiments tbody tr")).to_have_count(2)
    expect(page.locator("#no-results")).to_be_visible()
    page.evaluate("window.loadedOnce = true")  # gone if the page were loaded again

    # A worker starts: the page follows the jobs in place, every state seen on the way.
    embedded.start_worker()
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + FINISH_S
    while time.monotonic() < deadline:
        status = page.locator("#sweep-status").inner_text().strip()
        done = page.locator("#experiments .experiment-status .state-succeeded").count()
        if not seen or seen[-1] != (status, done):
            seen.append((status, done))
        if status in ("succeeded", "failed", "cancelled"):
            break
        page.wait_for_timeout(250)
    assert seen[-1] == ("succeeded", 2), (seen, embedded.processes.logs())
    assert seen[0] == ("queued", 0) and len(seen) >= 3, seen  # it moved step by step
    assert page.evaluate("window.loadedOnce === true")  # updated without a reload

    # The results table and, once the worker has built it, the report's figure.
    expect(page.locator("#results")).to_contain_text("test_accuracy")
    figure = page.locator(f'img[src="/api/v1/sweeps/{sweep_id}/report/report.png"]')
    expect(figure).to_be_visible(timeout=60_000)
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 100", arg=figure.element_handle()
    )
    assert not errors, errors


@pytest.mark.slow
def test_the_api_docs_render_in_the_browser_without_a_cdn(
    embedded: Backend, browser_page: Any
) -> None:
    """Every script, stylesheet, font and fetch of the pages comes from the API itself
    (point 3 of issue 14), and Swagger UI and ReDoc draw the operations from them. (ReDoc's
    "API docs by Redocly" footer still points its small logo at Redocly's site; without
    internet that image is missing, nothing else.)"""
    from playwright.sync_api import expect

    page = browser_page
    api = start_api(embedded)
    base = str(api.base_url).rstrip("/")
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda r: (
            elsewhere.append(r.url)
            if r.resource_type in NEEDED and not r.url.startswith((base, "blob:", "data:"))
            else None
        ),
    )
    page.goto(f"{base}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("regbench")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    page.goto(f"{base}/redoc")
    expect(page.get_by_text("/api/v1/sweeps/{sweep_id}/results").first).to_be_attached()
    assert not elsewhere, elsewhere
