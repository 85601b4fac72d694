"""GET /whoami: who the request acts as (the local user while no user exists)."""

from fastapi import APIRouter

from api.deps import PrincipalDep
from api.schemas import WhoamiPublic

router = APIRouter(prefix="/whoami", tags=["users"])


@router.get("")
def whoami(principal: PrincipalDep) -> WhoamiPublic:
    """The user this request's token names (never the token); ``authenticated`` is false
    for a read without a token while reads are open."""
    return WhoamiPublic(
        name=principal.name, admin=principal.admin, authenticated=principal.authenticated
    )
