"""/docs and /redoc work without internet: every script, stylesheet and icon they load is
served by the app itself (issue 14, point 3)."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import pytest

from tests.api.conftest import Api

# src="..." of a <script>, href="..." of a <link> (stylesheets, icons): every asset the
# two pages ask for before their scripts run.
_ASSET = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.I)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_every_asset_from_the_app_itself(api: Api, page: str) -> None:
    html = api.client.get(page)
    assert html.status_code == 200
    assets = _ASSET.findall(html.text)
    assert any(url.endswith(".js") for url in assets), assets  # the page has its script
    for url in assets:
        absolute = urljoin(str(html.url), url)
        assert absolute.startswith(str(api.client.base_url)), f"{page} loads {url} from outside"
        served = api.client.get(absolute)
        assert served.status_code == 200, f"{page}: {url} answered {served.status_code}"
        assert served.content, f"{page}: {url} is empty"
    assert "fonts.googleapis" not in html.text  # ReDoc's default web fonts


def test_swagger_ui_oauth2_redirect_page_is_still_served(api: Api) -> None:
    assert api.client.get("/docs/oauth2-redirect").status_code == 200
