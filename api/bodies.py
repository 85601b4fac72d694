"""What a request body may be before any route sees it: at most ``max_body_bytes`` (413),
and, when it is JSON, nested at most ``max_json_depth`` deep, every number finite and
every string free of NUL and of lone surrogates (422 naming the path, as FastAPI names
a field: ``["body", "grid", "training.lr", 1]``).

Python's ``json`` reads ``NaN``, ``Infinity``, ``1e400`` (as infinity) and ``"\\ud800"``
(a lone surrogate) without complaint, and such values broke everything after it: the
422 that echoes them cannot be written as JSON or UTF-8, PostgreSQL refuses them, SQLite
stores them; a value nested hundreds deep overflowed the stack of code that walks it.
So they are refused here, once, for every route. The body is parsed once more by
FastAPI; a body that is not JSON is left to FastAPI's own 422.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

JSON_METHODS = (b"POST", b"PUT", b"PATCH")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')  # a JSON string, escapes and all
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _error(loc: list[Any], message: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": message, "type": kind}


def _readable(key: str) -> str:
    """A key as it can be shown in a path (a lone surrogate written as an escape)."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _text_error(text: str) -> str | None:
    if "\x00" in text:
        return "text may not contain NUL (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text may not contain a lone surrogate (\\ud800-\\udfff): not valid Unicode"
    return None


def json_problems(value: Any, max_depth: int) -> list[dict[str, Any]]:
    """The first problem of a parsed JSON document, as a FastAPI error (or none).

    Most bodies have none, and ``_clean`` says so at the speed of ``json.dumps``; only
    a body it doubts is walked, with a stack, not recursion, for the problem's path (a
    container deeper than ``max_depth`` is reported there and not entered)."""
    if _clean(value, max_depth):
        return []
    stack: list[tuple[Any, list[Any]]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict | list):
            if len(path) >= max_depth:
                message = f"nested deeper than {max_depth} levels (REGBENCH_MAX_JSON_DEPTH)"
                return [_error(path, message, "too_deep")]
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, item in items:
                if isinstance(key, str):
                    problem = _text_error(key)
                    if problem is not None:
                        return [_error([*path, _readable(key)], f"a key: {problem}", "bad_text")]
                stack.append((item, [*path, key]))
        elif isinstance(node, float):
            if not math.isfinite(node):
                message = "Input should be a finite number (no NaN, Infinity or beyond 1.8e308)"
                return [_error(path, message, "finite_number")]
        elif isinstance(node, str):
            problem = _text_error(node)
            if problem is not None:
                return [_error(path, problem, "bad_text")]
    return []


def _clean(value: Any, max_depth: int) -> bool:
    """True if the document surely has no problem: written back as JSON (in C), it holds
    no non-finite number (``allow_nan=False`` raises), no lone surrogate (UTF-8 refuses
    it), no NUL escape, and its brackets outside strings nest at most ``max_depth`` deep.
    False means: walk it to find out (a string that spells a backslash and u0000 is fine)."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    if "\\u0000" in text:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) <= max_depth


def _is_json(scope: Scope) -> bool:
    """FastAPI reads a body as JSON when its type says JSON, or says nothing."""
    if scope.get("method", "").encode() not in JSON_METHODS:
        return False
    content_type = dict(scope["headers"]).get(b"content-type")
    if content_type is None:
        return True
    media = content_type.split(b";")[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class BodyLimits:
    """Answer 413 to a request whose body is over ``max_bytes`` (declared or streamed),
    and 422 to a JSON body with a problem (``json_problems``).

    The body is read here (at most ``max_bytes``) and handed on in one message.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        if body and _is_json(scope):
            problems = self._problems(bytes(body))
            if problems:
                response = JSONResponse(
                    {"detail": problems}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
                )
                await response(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _problems(self, body: bytes) -> list[dict[str, Any]]:
        try:
            document = json.loads(body)
        except RecursionError:  # deeper than Python's own parser goes: far past the limit
            message = f"nested deeper than {self.max_depth} levels (REGBENCH_MAX_JSON_DEPTH)"
            return [_error([], message, "too_deep")]
        except ValueError:  # not JSON (or not UTF-8): FastAPI answers that itself
            return []
        return json_problems(document, self.max_depth)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {
                "detail": f"request body over the limit of {self.max_bytes} bytes "
                "(REGBENCH_MAX_BODY_BYTES)"
            },
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
        )
        await response(scope, receive, send)
