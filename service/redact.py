"""Passwords and tokens out of everything shown: URIs with their secrets masked.

A database, broker or tracking URI may carry a password (``postgresql://u:pw@host/db``,
``redis://:pw@host``, ``http://u:pw@mlflow``) or a token in its query string
(``?token=...``). Whatever shows a URI (``/healthz``, error bodies, log lines, start-up
lines, the command line's messages) shows ``mask_uri(uri)``; text that may quote one (an
exception's message) goes through ``mask_text``, which also masks the literal secrets it
is given. Standard library only: the HTTP client imports it too.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

MASK = "***"
SECRET_QUERY_KEYS = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "auth",
        "key",
        "passwd",
        "password",
        "pwd",
        "secret",
        "sig",
        "signature",
        "token",
        "x-amz-credential",
        "x-amz-security-token",
        "x-amz-signature",
    }
)
SHORTEST_SECRET = 3  # a literal secret shorter than this is not masked in free text

# scheme://user:password@ -- the password runs to the last "@" before a space or quote
# (a password with a raw "@" is masked whole).
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@'\"]*:)(?P<password>[^\s'\"]*)@"
)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:" + "|".join(re.escape(k) for k in sorted(SECRET_QUERY_KEYS)) + r")=)"
    r"(?P<value>[^&#\s'\"]*)",
    re.IGNORECASE,
)


def mask_uri(uri: str) -> str:
    """The URI with its password and secret query parameters replaced by ``***``; the
    scheme, user, host, port, path and other parameters stay, so it still says where.
    Only those parts are rewritten: the rest is the text as given (``sqlite:////a``)."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # not parseable as a URL: mask what looks like a secret
        return mask_text(uri)
    masked = uri
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        masked = masked.replace(f"//{parts.netloc}", f"//{user}:{MASK}@{host}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(key.lower() in SECRET_QUERY_KEYS for key, _ in pairs):
            query = urlencode(
                [(k, MASK if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs],
                safe="*",
            )
            masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URI password and secret query parameter masked, and every one
    of ``secrets`` (literal passwords, tokens) replaced by ``***`` wherever it appears."""
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= SHORTEST_SECRET:
            text = text.replace(secret, MASK)
    return text


def uri_secrets(uri: str | None) -> set[str]:
    """The secrets a URI carries (its password, raw and decoded; secret query values):
    what ``mask_text`` must also hide when a library quotes them outside the URI."""
    if not uri:
        return set()
    found: set[str] = set()
    try:
        parts = urlsplit(uri)
        password = parts.password
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return found
    # A password equal to its user name (compose's development default, "regbench") is
    # masked in URIs only: masked as bare text it would blank out every "regbench".
    if password and password != parts.username:
        raw = parts.netloc.rpartition("@")[0].partition(":")[2]
        found.update({password, raw, unquote(raw)})
    found.update(value for key, value in query if key.lower() in SECRET_QUERY_KEYS and value)
    return {secret for secret in found if secret}


# --------------------------------------------------------------------------- logs

_secrets: frozenset[str] = frozenset()  # replaced whole, never changed in place
_installed = False


def install_log_redaction(secrets: Iterable[str]) -> None:
    """Mask URI passwords, secret query parameters and ``secrets`` in every log record
    this process makes from now on, whichever library logs it (its message, its
    arguments and its traceback). Idempotent; a second call adds secrets."""
    global _installed, _secrets
    _secrets = _secrets | {secret for secret in secrets if len(secret) >= SHORTEST_SECRET}
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        with contextlib.suppress(Exception):  # a record that cannot be read: left as it is
            redact_record(record, _secrets)
        return record

    logging.setLogRecordFactory(redacting_record)


def redact_record(record: logging.LogRecord, secrets: Iterable[str] = ()) -> None:
    """Mask the record in place: its message template, each argument whose text holds a
    secret (replaced by its masked text; other arguments keep their type, for formatters
    that read them), and its traceback (formatted now, masked, kept as ``exc_text``)."""
    if isinstance(record.msg, str):
        record.msg = mask_text(record.msg, secrets)
    elif record.msg is not None and not isinstance(record.msg, int | float):
        text = str(record.msg)
        masked = mask_text(text, secrets)
        if masked != text:
            record.msg = masked
    if isinstance(record.args, tuple):
        record.args = tuple(_masked_arg(arg, secrets) for arg in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {key: _masked_arg(arg, secrets) for key, arg in record.args.items()}
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = mask_text(_FORMATTER.formatException(record.exc_info), secrets)
    if record.stack_info:
        record.stack_info = mask_text(record.stack_info, secrets)


_FORMATTER = logging.Formatter()


def _masked_arg(arg: Any, secrets: Iterable[str]) -> Any:
    if arg is None or isinstance(arg, bool | int | float):
        return arg
    text = str(arg)
    masked = mask_text(text, secrets)
    return arg if masked == text else masked
