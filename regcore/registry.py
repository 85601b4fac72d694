"""One small registry for every kind of component (datasets, models, regularizers, analyses).

A component registers under a unique name together with the pydantic model of its
params:

    @REGULARIZERS.register("l2")
    class L2(Regularizer):
        Params = L2Params

Duplicate names fail at import time; an unknown name raises an error that names the
registry and lists what it holds. A registry created with ``package=`` imports every
module of that package on first use, so adding a component is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


NOT_IDENTITY: dict[str, Any] = {"identity": False}
"""Field metadata (``json_schema_extra``): the field does not change what is computed
(a label, a data location, a device), so the spec hash ignores it."""


# Bounds every component's params keep (stated in their JSON schema): numbers far past
# any useful setting, still finite and within every store's integers. Real-valued params
# go up to 1e15, so a run may still be made to diverge on purpose (a learning rate of
# 1e12), but never overflow before it starts.
MAX_SEED = 2**31 - 1  # a 32-bit signed integer: numpy, torch and PostgreSQL's integer accept it
MAX_COUNT = 100_000  # steps, iterations, restarts, planes, bins, pixels, ...
MAX_SAMPLES = 10**9  # sample counts
MAX_BATCH = 2**20  # samples (or grid points) per forward pass
MAX_WEIGHT = 1e15  # loss weights
MAX_FLOAT = 1e15  # other real-valued params (budgets, widths, noise, bounds)
MAX_LIST = 1000  # entries of a list of numbers (eps values, half-widths, steps)
MAX_WIDTH = 65_536  # units of one layer
MAX_LAYERS = 100


class ComponentParams(BaseModel):
    """Base of every component's params model: unknown keys are errors, not silently dropped,
    and NaN or infinite numbers are errors too (no param means anything by them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class UnknownComponentError(KeyError):
    """An unknown name was looked up; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind, self.name, self.valid = kind, name, valid
        choices = ", ".join(valid) if valid else "(none registered yet)"
        super().__init__(f"unknown {kind} {name!r}; valid choices: {choices}")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    target: T
    params: type[ComponentParams]

    @property
    def summary(self) -> str:
        """First line of the component's docstring, else of its module's."""
        doc = getattr(self.target, "__doc__", None)
        if not doc:
            doc = getattr(sys.modules.get(getattr(self.target, "__module__", "")), "__doc__", "")
        return doc.strip().splitlines()[0] if doc and doc.strip() else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self._package = package
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = package is None

    def register(
        self, name: str, *, params: type[ComponentParams] | None = None
    ) -> Callable[[T], T]:
        """Decorator; params default to the target's ``Params`` attribute."""

        def decorate(target: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            params_model = params if params is not None else getattr(target, "Params", None)
            if not (isinstance(params_model, type) and issubclass(params_model, ComponentParams)):
                raise TypeError(
                    f"{self.kind} {name!r} needs a params model subclassing ComponentParams"
                )
            self._entries[name] = Entry(name=name, target=target, params=params_model)
            return target

        return decorate

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self._package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self._package}.{module.name}")

    def get(self, name: str) -> Entry[T]:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def build(
        self, name: str, params: ComponentParams | dict[str, Any] | None = None, *args: Any
    ) -> Any:
        """Validate params (if given as a dict) and call ``target(params, *args)``."""
        entry = self.get(name)
        if not isinstance(params, ComponentParams):
            params = entry.params.model_validate(params or {})
        return entry.target(params, *args)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        self._load()
        return iter(sorted(self._entries.values(), key=lambda entry: entry.name))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"
