"""GET /catalog: every registered component and its params' JSON schema."""

from functools import cache
from typing import Any

from fastapi import APIRouter

from api.schemas import CatalogPublic
from regcore.catalog import build_catalog

router = APIRouter(prefix="/catalog", tags=["catalog"])


@cache
def cached_catalog() -> dict[str, list[dict[str, Any]]]:
    """The registries do not change while the process runs."""
    return build_catalog()


@router.get("", response_model=CatalogPublic)
def read_catalog() -> dict[str, list[dict[str, Any]]]:
    """Datasets, models, regularizers, analyses and attacks, each with its summary and
    the JSON schema of its params (what a spec may write next to its name)."""
    return cached_catalog()
