"""ExperimentSpec: the one contract shared by the client, the API, the workers and regcore.

A spec names a dataset, a model, a list of regularizers, the training recipe, the
analyses to run afterwards and the resources it needs. Every component is written
flat, ``{name: jacobian, weight: 0.01, n_proj: 1}``, and its params are validated by
the params model its registry entry declares, so an unknown name or a bad value
fails with the field path (``regularizers.0.weight``) and the valid choices.

The spec hash identifies the science of an experiment: it is stable across key
order and across defaults written out or omitted, and ignores fields marked
``identity=False`` (labels, data locations, devices, resources). A field marked
``IDENTITY_UNLESS_DEFAULT`` counts only when set to something other than its default
(``training.precision``), so adding it kept every earlier spec's hash. ``SpecHasher``
gives the same hashes for many specs that share parts (a grid's points), writing each
shared part's JSON once.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from regcore.registries import ANALYSES, DATASETS, MODELS, REGULARIZERS
from regcore.registry import (
    MAX_BATCH,
    MAX_LIST,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_WEIGHT,
    NOT_IDENTITY,
    ComponentParams,
    Registry,
    UnknownComponentError,
)


class SpecError(ValueError):
    """A spec that cannot be read (bad YAML/JSON, not a mapping, missing file)."""


# --------------------------------------------------------------------------- names

NAME_MAX_LENGTH = 200  # the name columns of the job store are String(200)
NAME_CHARACTERS = "ASCII letters, digits, space and . _ - + = , ( ) @"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._+=,()@-]*$"
_NAME = re.compile(NAME_PATTERN)
STORED = "stored"
"""Validation context key: ``{STORED: True}`` reads a spec recorded by an earlier version,
whose name may be outside today's safe set (names never reach a path, so it is harmless)."""


def _safe_name(value: str, info: ValidationInfo) -> str:
    if isinstance(info.context, Mapping) and info.context.get(STORED):
        return value
    if len(value) > NAME_MAX_LENGTH or not _NAME.fullmatch(value):  # not "$": "a\n"
        raise PydanticCustomError(
            "unsafe_name",
            "a name is 1 to {max_length} characters, starts with a letter or digit and "
            "holds only {characters}",
            {"max_length": NAME_MAX_LENGTH, "characters": NAME_CHARACTERS},
        )
    return value


SafeName = Annotated[
    str,
    AfterValidator(_safe_name),
    Field(
        min_length=1,
        description=f"1 to {NAME_MAX_LENGTH} characters: {NAME_CHARACTERS}, "
        "starting with a letter or digit",
        json_schema_extra={"pattern": NAME_PATTERN, "maxLength": NAME_MAX_LENGTH},
    ),
]
"""An experiment's or sweep's name: a label for people, never part of a path (artifact
locations and working directories come from ids), yet kept to a small safe set so that
no tool that shows or stores it meets a surprise (slashes, control characters, lone
surrogates, NUL, over-long values)."""


_NAME_ADAPTER: TypeAdapter[str] = TypeAdapter(SafeName)


# --------------------------------------------------------------------------- components


def _line_error(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> dict[str, Any]:
    return {"type": PydanticCustomError(kind, message), "loc": loc, "input": value}


class Component(BaseModel):
    """A registered component chosen by name, its params checked by the entry's own model."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    registry: ClassVar[Registry]
    key: ClassVar[str] = "name"

    name: str
    params: ComponentParams

    @model_validator(mode="wrap")
    @classmethod
    def _from_flat(cls, data: Any, handler: Any) -> Self:
        if isinstance(data, cls):
            return data
        kind = cls.registry.kind
        if isinstance(data, str):  # shorthand: "l2" means {name: l2} with defaults
            data = {cls.key: data}
        if not isinstance(data, Mapping):
            raise PydanticCustomError(
                "component_type",
                "expected a mapping like {{{key}: <{kind}>, ...params}}",
                {"key": cls.key, "kind": kind},
            )
        raw = dict(data)
        name = raw.pop(cls.key, None)
        try:
            entry = cls.registry.get(name) if isinstance(name, str) else None
        except UnknownComponentError as exc:
            raise ValidationError.from_exception_data(
                cls.__name__, [_line_error((cls.key,), "unknown_component", str(exc), name)]
            ) from None
        if entry is None:
            choices = ", ".join(cls.registry.names())
            message = f"a {kind} needs a {cls.key!r}; valid choices: {choices}"
            raise ValidationError.from_exception_data(
                cls.__name__, [_line_error((cls.key,), "missing_component", message, data)]
            )
        try:
            params = entry.params.model_validate(raw)
        except ValidationError as exc:
            raise _explain_unknown_params(exc, entry.params, f"{kind} {name!r}") from None
        return cls.model_construct(name=name, params=params)

    @model_serializer(mode="plain")
    def _to_flat(self) -> dict[str, Any]:
        return {self.key: self.name, **self.params.model_dump(mode="json")}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        return {
            "type": "object",
            "title": cls.__name__,
            "description": f"A {cls.registry.kind}: its {cls.key!r} plus that component's own "
            "params (see GET /api/v1/catalog).",
            "properties": {cls.key: {"type": "string"}},
            "required": [cls.key],
            "additionalProperties": True,
        }


def _explain_unknown_params(
    exc: ValidationError, params: type[BaseModel], what: str
) -> ValidationError:
    """Rewrite 'extra inputs are not permitted' so it lists the params that do exist."""
    valid = ", ".join(params.model_fields) or "(no params)"
    errors: list[dict[str, Any]] = []
    for error in exc.errors():
        if error["type"] == "extra_forbidden":
            field = error["loc"][-1]
            message = f"unknown parameter {field!r} for {what}; valid parameters: {valid}"
            message += did_you_mean(field, params.model_fields)
            errors.append(_line_error(error["loc"], "unknown_parameter", message, error["input"]))
        else:
            errors.append(
                _line_error(error["loc"], error["type"], error["msg"], error.get("input"))
            )
    return ValidationError.from_exception_data(exc.title, errors)


class DatasetSpec(Component):
    registry: ClassVar[Registry] = DATASETS


class ModelSpec(Component):
    registry: ClassVar[Registry] = MODELS


class RegularizerSpec(Component):
    registry: ClassVar[Registry] = REGULARIZERS


class AnalysisSpec(Component):
    registry: ClassVar[Registry] = ANALYSES
    key: ClassVar[str] = "kind"


# --------------------------------------------------------------------------- training


# The spec's own bounds (stated in its JSON schema); seeds, batches, sample counts and
# weights share those of the components' params (``regcore.registry``). A seed fits a
# 32-bit signed integer: a sweep's members keep theirs in one.
MAX_EPOCHS = 100_000
MAX_LR = 1e15
MAX_MINUTES = 100_000  # a job's time limit (~69 days)
MAX_MEMORY_GB = 100_000.0
MAX_ANALYSES = 64  # per spec, the schema's ceiling (REGBENCH_MAX_ANALYSES_PER_SPEC <= this)
MAX_REGULARIZERS = 32

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


def did_you_mean(word: Any, choices: Iterator[str] | Mapping[str, Any] | list[str]) -> str:
    """``"; did you mean 'epochs'?"`` for a close match of a mistyped name, else ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Strict(BaseModel):
    # allow_inf_nan=False: NaN and infinities are never a valid setting, and neither
    # PostgreSQL's JSON nor the 422 that echoes them could hold them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _explain_unknown_fields(cls, data: Any, handler: Any) -> Self:
        """A mistyped field's error lists the fields that exist (and the closest one)
        instead of pydantic's bare "Extra inputs are not permitted"."""
        try:
            return handler(data)
        except ValidationError as exc:
            # Nested models explained their own fields; this one only its direct keys.
            if not any(e["type"] == "extra_forbidden" and len(e["loc"]) == 1 for e in exc.errors()):
                raise
            raise _explain_unknown_fields(exc, cls) from None


def _explain_unknown_fields(exc: ValidationError, model: type[BaseModel]) -> ValidationError:
    valid = ", ".join(model.model_fields)
    errors: list[dict[str, Any]] = []
    for error in exc.errors():
        if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
            field = error["loc"][0]
            message = f"unknown field {field!r}; valid: {valid}"
            message += did_you_mean(field, model.model_fields)
        else:
            message = error["msg"]
        errors.append(_line_error(error["loc"], error["type"], message, error.get("input")))
    return ValidationError.from_exception_data(exc.title, errors)


class ConstantSchedule(_Strict):
    kind: Literal["constant"] = "constant"


class StepSchedule(_Strict):
    """Multiply the learning rate by gamma at each milestone, given as a fraction of training."""

    kind: Literal["step"] = "step"
    milestones: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        [1 / 3, 2 / 3], max_length=MAX_LIST
    )
    gamma: float = Field(0.1, gt=0, le=MAX_WEIGHT)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if value != sorted(set(value)):
            raise ValueError("milestones must be strictly increasing fractions of training")
        return value


class CosineSchedule(_Strict):
    """Cosine decay from lr to min_lr_fraction * lr over the whole run."""

    kind: Literal["cosine"] = "cosine"
    min_lr_fraction: float = Field(0.0, ge=0, le=1)


Schedule = Annotated[ConstantSchedule | StepSchedule | CosineSchedule, Field(discriminator="kind")]


class EarlyStopping(_Strict):
    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(10, ge=1, le=MAX_EPOCHS)
    min_delta: float = Field(0.0, ge=0, le=MAX_WEIGHT)
    restore_best: bool = True


IDENTITY_UNLESS_DEFAULT: dict[str, Any] = {"identity": "unless_default"}
"""Field metadata: part of the spec hash only when it differs from its default, so a field
added later leaves the hash of every spec written before it unchanged."""

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class TrainingSpec(_Strict):
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(100, ge=1, le=MAX_BATCH)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, le=MAX_LR)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.999,
    )
    weight_decay: float = Field(0.0, ge=0, le=MAX_WEIGHT)
    schedule: Schedule = ConstantSchedule()
    seed: Seed = 0
    early_stopping: EarlyStopping | None = None
    device: str = Field("auto", json_schema_extra=NOT_IDENTITY)
    deterministic: bool = Field(
        False,
        description="torch.use_deterministic_algorithms (bitwise repeatable on GPUs, slower)",
        json_schema_extra=NOT_IDENTITY,
    )
    eval_batch_size: int = Field(1000, ge=1, le=MAX_BATCH, json_schema_extra=NOT_IDENTITY)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: the training forward passes run under torch.autocast(bfloat16) "
        "(cuda and cpu); losses, double-backward penalties and evaluation stay fp32 "
        "(regcore.runtime). It changes the numbers, so it is part of the spec hash.",
        json_schema_extra=IDENTITY_UNLESS_DEFAULT,
    )
    channels_last: bool = Field(
        False,
        description="image models and batches in the channels-last memory format (faster "
        "convolutions on GPUs); the same numbers up to float rounding",
        json_schema_extra=NOT_IDENTITY,
    )
    compile: bool = Field(
        False,
        description="torch.compile the training forward pass; falls back to eager with a "
        "warning where it cannot (double-backward regularizers, a compiler error)",
        json_schema_extra=NOT_IDENTITY,
    )
    final_train_eval: int | None = Field(
        10_000,
        ge=0,
        le=MAX_SAMPLES,
        description="training samples in the final train_loss/train_accuracy: a fixed "
        "subset, the same for every seed (0: skip them; null: the whole training set)",
        json_schema_extra=NOT_IDENTITY,
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("device must be one of auto, cpu, mps, cuda, cuda:N")
        return value

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> Self:
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        return self


class ResourcesSpec(_Strict):
    """What a job needs from a worker; ignored by local runs and by the spec hash."""

    queue: Literal["auto", "gpu", "cpu"] = "auto"
    gpu_fraction: float = Field(
        1.0, gt=0, le=1, description="share of one GPU; below 1 lets small jobs share a GPU"
    )
    memory_gb: float | None = Field(None, gt=0, le=MAX_MEMORY_GB)
    time_limit_minutes: int | None = Field(None, ge=1, le=MAX_MINUTES)


# --------------------------------------------------------------------------- the spec


class ExperimentSpec(_Strict):
    name: SafeName = Field("experiment", json_schema_extra=NOT_IDENTITY)
    description: str = Field("", json_schema_extra=NOT_IDENTITY)
    dataset: DatasetSpec
    model: ModelSpec
    regularizers: list[RegularizerSpec] = Field([], max_length=MAX_REGULARIZERS)
    training: TrainingSpec = TrainingSpec()
    analyses: list[AnalysisSpec] = Field([], max_length=MAX_ANALYSES)
    resources: ResourcesSpec = Field(ResourcesSpec(), json_schema_extra=NOT_IDENTITY)

    @model_validator(mode="after")
    def _early_stopping_needs_validation(self) -> Self:
        val_fraction = getattr(self.dataset.params, "val_fraction", None)
        if self.training.early_stopping is not None and not val_fraction:
            raise ValueError(
                "training.early_stopping needs a validation split: set dataset.val_fraction > 0"
            )
        return self

    # -- reading

    @classmethod
    def from_text(cls, text: str) -> ExperimentSpec:
        """Parse YAML (a superset of JSON) and validate."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"not valid YAML or JSON: {exc}") from None
        if not isinstance(data, Mapping):
            raise SpecError("a spec must be a mapping at the top level")
        return cls.model_validate(data)

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> ExperimentSpec:
        """A spec the job store (or a checkpoint) recorded, maybe by an earlier version:
        its name is read as it was written (see ``STORED``)."""
        return cls.model_validate(data, context={STORED: True})

    @classmethod
    def from_file(cls, path: str | Path) -> ExperimentSpec:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"cannot read spec {path}: {exc.strerror}") from None
        return cls.from_text(text)

    # -- writing and identity

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def identity(self) -> dict[str, Any]:
        """The spec with every default written out and every non-identity field dropped."""
        return _identity(self)

    def spec_hash(self) -> str:
        """sha256 of the identity as JSON with sorted keys and no spaces."""
        return SpecHasher()(self)

    def flat_params(self) -> dict[str, str]:
        """Dotted keys -> values as text (``regularizers.0.weight``), for trackers."""
        flat: dict[str, str] = {}
        _flatten(self.model_dump(mode="json"), "", flat)
        return flat


class SweepSpec(_Strict):
    """A grid submitted as one sweep: a base spec and lists of values at dotted paths
    (``regcore.grid``). The grid's points are validated as ExperimentSpecs when the sweep
    is expanded (``service.sweeps.plan``), where an error can name the grid entry."""

    name: SafeName | None = None
    base: dict[str, Any]
    grid: dict[str, list[Any]] = Field(
        description="dotted path -> non-empty list of values (a cartesian product)"
    )

    @field_validator("grid")
    @classmethod
    def _non_empty_lists(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [path for path, values in grid.items() if not values]
        if empty:
            raise ValueError(f"grid entries need at least one value: {', '.join(empty)}")
        return grid

    @model_validator(mode="after")
    def _safe_base_name(self, info: ValidationInfo) -> Self:
        """The base spec's name labels the sweep even when the grid replaces it in every
        point (where no point's validation would see it): it must be a safe name too."""
        name = self.base.get("name")
        if isinstance(name, str) and self.name is None:
            try:
                _NAME_ADAPTER.validate_python(name, context=info.context)
            except ValidationError as exc:
                error = exc.errors(include_url=False)[0]
                raise ValidationError.from_exception_data(
                    type(self).__name__,
                    [_line_error(("base", "name"), error["type"], error["msg"], name)],
                ) from None
        return self

    def label(self) -> str:
        """The sweep's name: its own, else its base spec's."""
        base_name = self.base.get("name")
        return self.name or (base_name if isinstance(base_name, str) and base_name else "sweep")


class SpecHasher:
    """``spec_hash`` of many specs, bit-identical to each one's own, writing the JSON of a
    part they share once.

    The points of a grid share their validated parts (``service.sweeps.plan`` validates
    each distinct field value once, and a spec keeps the part objects it is given): a
    part's canonical JSON is kept by the part object itself (parts are frozen), and a
    spec's is its identity fields' pieces joined as ``json.dumps(..., sort_keys=True)``
    joins them. A grid of 4 regularizer lists x 250 seeds writes 4 lists, 250 training
    sections and the rest once, instead of 1,000 whole specs.
    """

    def __init__(self) -> None:
        self._pieces: dict[int, tuple[BaseModel, str]] = {}  # id(part) -> (part, its JSON)

    def __call__(self, spec: ExperimentSpec) -> str:
        items = sorted(_identity_items(spec))  # sorted top-level keys, as sort_keys sorts
        fields = ",".join(f'"{name}":{self._piece(value)}' for name, value in items)
        return hashlib.sha256(f"{{{fields}}}".encode()).hexdigest()

    def _piece(self, value: Any) -> str:
        if isinstance(value, list | tuple):
            return f"[{','.join(self._piece(item) for item in value)}]"
        if not isinstance(value, BaseModel):
            return _canonical(_identity(value))
        known = self._pieces.get(id(value))
        if known is None or known[0] is not value:
            known = self._pieces[id(value)] = (value, _canonical(_identity(value)))
        return known[1]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _identity_items(value: BaseModel) -> Iterator[tuple[str, Any]]:
    """A model's fields that count for its identity: not ``identity=False``, and not an
    ``IDENTITY_UNLESS_DEFAULT`` field at its default."""
    for field_name, unless_default, default in _identity_fields(type(value)):
        item = getattr(value, field_name)
        if not (unless_default and item == default):
            yield field_name, item


@functools.cache
def _identity_fields(model: type[BaseModel]) -> tuple[tuple[str, bool, Any], ...]:
    """(name, counts only when not at its default, default) of a model's identity fields."""
    fields = []
    for field_name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("identity") is not False:
            fields.append((field_name, extra.get("identity") == "unless_default", field.default))
    return tuple(fields)


def _identity(value: Any) -> Any:
    if isinstance(value, Component):
        return {value.key: value.name, **_identity(value.params)}
    if isinstance(value, BaseModel):
        return {field_name: _identity(item) for field_name, item in _identity_items(value)}
    if isinstance(value, list | tuple):
        return [_identity(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _identity(item) for key, item in value.items()}
    return value


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}{key}.", out)
    elif isinstance(value, list) and value and any(isinstance(v, dict) for v in value):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}{index}.", out)
    else:
        out[prefix.rstrip(".")] = json.dumps(value) if not isinstance(value, str) else value


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``regularizers.0.weight: Input should be >= 0``."""
    lines = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"]) or "(spec)"
        lines.append(f"{path}: {error['msg']}")
    return "\n".join(lines)
