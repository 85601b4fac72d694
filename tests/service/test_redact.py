"""service.redact: URIs shown with their passwords and tokens masked, free text and log
records cleaned of them."""

from __future__ import annotations

import logging

import pytest

from service.redact import install_log_redaction, mask_text, mask_uri, uri_secrets
from service.settings import Settings


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://u:secret@db:5432/jobs", "postgresql://u:***@db:5432/jobs"),
        ("postgresql+psycopg://u:p%40ss@db/jobs", "postgresql+psycopg://u:***@db/jobs"),
        ("postgresql://u:p@ss@db/jobs", "postgresql://u:***@db/jobs"),  # a raw "@"
        ("redis://:secret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("http://u:secret@mlflow:5000", "http://u:***@mlflow:5000"),
        ("https://mlflow/?token=abc&x=1", "https://mlflow/?token=***&x=1"),
        ("https://h/p?Access_Token=abc#f", "https://h/p?Access_Token=***#f"),
        ("postgresql://postgres@db/jobs", "postgresql://postgres@db/jobs"),  # no password
        ("sqlite:////data/jobs.db", "sqlite:////data/jobs.db"),
        ("http://mlflow:5000", "http://mlflow:5000"),
    ],
)
def test_mask_uri(uri: str, shown: str) -> None:
    assert mask_uri(uri) == shown


def test_mask_text_masks_uris_inside_messages_and_literal_secrets() -> None:
    text = (
        "API request to http://u:hunter22@mlflow:5000/api/2.0/x?token=t0k failed; "
        "'redis://:pw-in-quotes@r:6379/0' and the bare hunter22 again"
    )
    masked = mask_text(text, {"hunter22"})
    assert "hunter22" not in masked and "t0k" not in masked and "pw-in-quotes" not in masked
    assert "http://u:***@mlflow:5000/api/2.0/x?token=***" in masked
    assert "redis://:***@r:6379/0" in masked
    assert mask_text("port 5432 of host:5000 is fine") == "port 5432 of host:5000 is fine"


def test_settings_know_their_secrets() -> None:
    settings = Settings(
        database_url="postgresql://u:p%40ss@db/jobs",
        broker_url="redis://:broker-pw@r/0",
        mlflow_tracking_uri="http://m/?token=trk",
        api_token="api-token",
    )
    assert settings.secrets == {"p@ss", "p%40ss", "broker-pw", "trk", "api-token"}
    assert uri_secrets(None) == set() and uri_secrets("sqlite:///x.db") == set()
    # docker-compose's development default: the URI is masked, the word is not a secret
    assert uri_secrets("postgresql://regbench:regbench@postgres/regbench") == set()
    assert mask_uri("postgresql://regbench:regbench@postgres/regbench") == (
        "postgresql://regbench:***@postgres/regbench"
    )


def test_log_records_are_masked_whoever_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction({"Lit3ral-secret"})
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("some.library")
    logger.debug("connecting to %s", "postgresql://u:Pw-in-arg@db/jobs")
    logger.info("token %s and %d jobs", "Lit3ral-secret", 3)
    try:
        raise RuntimeError("failed at http://u:Pw-in-traceback@m/")
    except RuntimeError:
        logger.exception("boom")
    text = caplog.text
    assert "Pw-in-arg" not in text and "Lit3ral-secret" not in text
    assert "Pw-in-traceback" not in text and "RuntimeError" in text
    assert "postgresql://u:***@db/jobs" in text and "token *** and 3 jobs" in text
