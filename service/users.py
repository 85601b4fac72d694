"""Users, their tokens, and who may change what.

A token is 32 random bytes (``secrets.token_urlsafe``) behind a ``rb_`` prefix, shown
once by ``regbench users add``; the job store keeps only its sha256 (a token that
strong needs no salt or slow hash: nobody can guess it from its hash). A request's
token is hashed and looked up by that hash, the stored one compared in constant time.

Who acts (``Principal``):
- no user exists and no ``REGBENCH_API_TOKEN`` is set: the embedded default, open; every
  request runs as the local user (``REGBENCH_LOCAL_USER``, an admin), tokens ignored;
- otherwise writes need a valid token (401), and reads too when ``REGBENCH_AUTH_READS``
  is true or the deprecated ``REGBENCH_API_TOKEN`` is set (as before it); that token
  still works, as the admin ``API_TOKEN_USER``.

Ownership: an experiment or sweep belongs to the user who first submitted it. An
experiment deduplicated into another user's submission stays its first owner's; the
other user's sweep is theirs. Anyone allowed to read reads everything; only the owner
or an admin cancels, adds analyses or rebuilds a report (``may_change``); cancelling a
sweep cancels only the experiments its caller may change.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.settings import Settings
from service.tables import User

TOKEN_PREFIX: Final = "rb_"
WITH_USERS: Final = "auth: users: "  # how auth_mode's line starts when tokens name users
API_TOKEN_USER: Final = "admin"  # who the deprecated REGBENCH_API_TOKEN acts as
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}")
NAME_RULE: Final = (
    "1 to 100 characters: letters, digits and . _ - @, starting with a letter or a digit"
)


class UserError(ValueError):
    """A user command that cannot be done (bad name, exists, unknown)."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts as. ``authenticated`` is False only for a read without a token
    while reads are open (it may read, never change anything)."""

    name: str
    admin: bool
    authenticated: bool = True


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"invalid user name {name!r}: {NAME_RULE}")
    return name


def add_user(session: Session, name: str, *, admin: bool = False) -> str:
    """Record a user; returns their token, which is nowhere else (the caller commits)."""
    check_name(name)
    if session.get(User, name) is not None:
        raise UserError(f"user {name!r} exists; `regbench users token {name}` gives a new token")
    token = new_token()
    session.add(User(name=name, token_hash=hash_token(token), admin=admin))
    try:
        session.flush()
    except IntegrityError as exc:  # added at the same moment by someone else
        raise UserError(f"user {name!r} exists") from exc
    return token


def new_user_token(session: Session, name: str) -> str:
    """Replace a user's token (the old one stops working); returns the new one."""
    user = session.get(User, name)
    if user is None:
        raise UserError(f"no user {name!r}")
    token = new_token()
    user.token_hash = hash_token(token)
    session.flush()
    return token


def remove_user(session: Session, name: str) -> None:
    """Delete a user: their token stops working; their rows keep their name as owner."""
    user = session.get(User, name)
    if user is None:
        raise UserError(f"no user {name!r}")
    session.delete(user)
    session.flush()


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def any_users(session: Session) -> bool:
    return session.scalar(select(User.name).limit(1)) is not None


def find_user(session: Session, token: str) -> User | None:
    """The user holding ``token``, or None."""
    digest = hash_token(token)
    user = session.scalar(select(User).where(User.token_hash == digest))
    if user is None or not secrets.compare_digest(user.token_hash, digest):
        return None
    return user


def auth_mode(settings: Settings, session: Session) -> str:
    """One line on who may do what, for start-up messages (``regbench serve``, the API log)."""
    count = len(list_users(session))
    if settings.api_token is not None:
        return (
            f"auth: {count} user(s) and the deprecated shared REGBENCH_API_TOKEN (acting as "
            f"the admin {API_TOKEN_USER!r}); every /api/v1 request needs a token"
        )
    if count == 0:
        return (
            f"auth: no users, so no tokens: every request runs as the local user "
            f"{settings.local_user!r} (an admin); `regbench users add NAME --admin` turns "
            "tokens on"
        )
    reads = "reads too" if settings.auth_reads else "reads are open (REGBENCH_AUTH_READS)"
    return f"{WITH_USERS}{count} user(s); writes need a token, {reads}"


def may_change(principal: Principal, owner: str) -> bool:
    """Cancel, add analyses, rebuild a report: the owner or an admin."""
    return principal.authenticated and (principal.admin or principal.name == owner)
