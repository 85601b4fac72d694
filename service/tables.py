"""The job store's tables (SQLAlchemy 2). Alembic migrations in ``migrations/`` create them.

The database is the source of truth for every job; the broker only carries job ids.
An experiment is one spec: a ``train`` job plus analysis jobs that depend on it.
A sweep is a grid of experiments; ``sweep_experiments`` links them, so an experiment
shared by two sweeps (the same spec, deduplicated) counts in both.
Deduplication: ``experiments.dedup_key`` is unique; it equals the spec hash unless the
submitter forced a new experiment (then the hash plus a fresh suffix).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobKind(StrEnum):
    TRAIN = "train"
    ATTACK = "attack"
    BOUNDARY = "boundary"
    GEOMETRY = "geometry"
    CALIBRATION = "calibration"
    PLOTS = "plots"


class ReportStatus(StrEnum):
    NONE = "none"
    BUILDING = "building"
    DONE = "done"
    FAILED = "failed"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class User(Base):
    """Someone who may submit work: the API knows them by a token, of which only the
    sha256 is stored. ``admin``: may cancel anyone's work. Rows name their owner by the
    user's name (not a foreign key: rows outlive their users, and the embedded default's
    local user and older rows' "anonymous" have no row here)."""

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sweep(Base):
    __tablename__ = "sweeps"
    # The same grid submitted by two users is two sweeps (each cancels only its own);
    # their experiments are shared (deduplicated by spec), owned by the first submitter.
    __table_args__ = (UniqueConstraint("owner", "sweep_hash", name="uq_sweeps_owner_sweep_hash"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(100), default="anonymous", index=True)
    sweep_hash: Mapped[str] = mapped_column(String(64), index=True)
    base: Mapped[dict[str, Any]]
    grid: Mapped[dict[str, Any]]
    size: Mapped[int] = mapped_column(Integer, default=0)  # experiments in the sweep
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    report_status: Mapped[str] = mapped_column(String(20), default=ReportStatus.NONE)
    report_run_id: Mapped[str | None] = mapped_column(String(64))  # the sweep-level MLflow run
    report_error: Mapped[str | None] = mapped_column(Text)
    report_started_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    experiments: Mapped[list[Experiment]] = relationship(back_populates="sweep")
    members: Mapped[list[SweepMember]] = relationship(
        back_populates="sweep", order_by="SweepMember.position"
    )


class SweepMember(Base):
    """One grid point of a sweep: its experiment, configuration label and seed."""

    __tablename__ = "sweep_experiments"

    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id"), primary_key=True)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id"), primary_key=True, index=True
    )
    position: Mapped[int] = mapped_column(Integer)  # order of the grid's expansion
    configuration: Mapped[str] = mapped_column(Text)  # the point's label, seed left out
    seed: Mapped[int] = mapped_column(Integer)

    sweep: Mapped[Sweep] = relationship(back_populates="members")
    experiment: Mapped[Experiment] = relationship()


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(100), default="anonymous", index=True)
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id"), index=True)
    configuration: Mapped[str | None] = mapped_column(Text)  # the grid point's label
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64), index=True)
    # Experiments with one stack key may train as one stacked model (regcore.stacked):
    # they differ only in seeds and numeric params. None: this one cannot stack.
    stack_key: Mapped[str | None] = mapped_column(String(64), index=True)
    dedup_key: Mapped[str] = mapped_column(String(100), unique=True)
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    sweep: Mapped[Sweep | None] = relationship(back_populates="experiments")
    jobs: Mapped[list[Job]] = relationship(back_populates="experiment", order_by="Job.created_at")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_queue", "state", "queue"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    payload: Mapped[dict[str, Any] | None]  # an analysis job's spec entry
    depends_on: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    state: Mapped[str] = mapped_column(String(20), default=JobState.QUEUED)
    queue: Mapped[str] = mapped_column(String(20), default="cpu")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    device: Mapped[str | None] = mapped_column(String(50))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    experiment: Mapped[Experiment] = relationship(back_populates="jobs")


class Worker(Base):
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    queues: Mapped[str] = mapped_column(String(200))
    device: Mapped[str | None] = mapped_column(String(50))
    slots: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # jobs at once
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class Prediction(Base):
    """An experiment's final predicted labels on one split (``test``): compact numpy bytes
    of ``dtype``, with ``n`` labels and the sha256 of the split's true labels (which test
    set they were predicted on). Instability across seeds is computed from these."""

    __tablename__ = "predictions"

    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), primary_key=True)
    split: Mapped[str] = mapped_column(String(16), primary_key=True)
    labels: Mapped[bytes] = mapped_column(LargeBinary)
    dtype: Mapped[str] = mapped_column(String(8))
    n: Mapped[int] = mapped_column(Integer)
    labels_checksum: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
