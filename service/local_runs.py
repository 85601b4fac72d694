"""Runs specs in this process against the configured MLflow store (``regbench run``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from rich.progress import Progress

from regcore.analysis.base import AnalysisEvent
from regcore.compare import compare
from regcore.data import DatasetNotFoundError, DataSplits, load_dataset
from regcore.instability import StoredPrediction
from regcore.pipeline import analyze as analyze_checkpoint
from regcore.pipeline import run as run_pipeline
from regcore.spec import AnalysisSpec, ExperimentSpec
from regcore.train import (
    Callbacks,
    TrainingCancelledError,
    TrainingDivergedError,
    load_checkpoint,
)
from service.settings import Settings, UnsafePathKeyError
from service.tracking import RUN_KIND_TAG, TRAIN_RUN_KIND, MlflowTracker, train_run_name


class RunFailedError(RuntimeError):
    """A run could not finish; the message says why (the MLflow run is marked FAILED)."""


class LocalRunner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._datasets: dict[tuple[str, int], DataSplits] = {}
        # MLflow run id -> the run's final test predictions (instability across seeds)
        self.predictions: dict[str, StoredPrediction | None] = {}

    def dataset(self, spec: ExperimentSpec) -> DataSplits:
        """Load each (dataset, seed) once per runner: a grid reuses its splits."""
        key = (spec.dataset.model_dump_json(), spec.training.seed)
        if key not in self._datasets:
            try:
                self._datasets[key] = load_dataset(spec.dataset, spec.training.seed)
            except DatasetNotFoundError as exc:
                raise RunFailedError(str(exc)) from None
        return self._datasets[key]

    def run(self, spec: ExperimentSpec, progress: Progress, label: str) -> dict[str, Any]:
        data = self.dataset(spec)  # before MLflow: a missing dataset leaves no run behind
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        tracker = MlflowTracker(
            self.settings.tracking_uri,
            self.settings.mlflow_experiment,
            artifact_location=self.settings.default_artifact_location,
            confine_to=self.settings.local_artifact_root,
            run_name=train_run_name(spec.name, spec.training.seed),
            tags={"regbench.source": "local", RUN_KIND_TAG: TRAIN_RUN_KIND},
        )
        workdir = self.settings.run_workdir(tracker.run_id)
        task = progress.add_task(label, total=spec.training.epochs, status="")

        def on_step(epoch: int, step: int, steps: int) -> None:
            progress.update(task, completed=epoch - 1 + step / steps, status=f"epoch {epoch}")

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            shown = metrics.get("val/accuracy", metrics["train/accuracy"])
            progress.update(task, completed=epoch, status=f"epoch {epoch} acc {shown:.3f}")

        try:
            result = run_pipeline(
                spec,
                tracker,
                workdir=workdir,
                data=data,
                callbacks=Callbacks(on_step=on_step, on_epoch=on_epoch),
            )
        except (TrainingDivergedError, TrainingCancelledError, ValueError) as exc:
            tracker.finish("FAILED")
            raise RunFailedError(str(exc)) from exc
        except BaseException:
            tracker.finish("FAILED")
            raise
        finally:
            progress.remove_task(task)
        tracker.finish("FINISHED")
        # The checkpoints are in MLflow now; keep only the small files locally.
        for name in ("last.pt", "best.pt"):
            (workdir / name).unlink(missing_ok=True)
        self.predictions[tracker.run_id] = result.predictions
        return {**result.metrics, "mlflow_run_id": tracker.run_id}

    def analyze(
        self,
        run_id: str,
        analyses: list[AnalysisSpec],
        on_progress: Callable[[AnalysisEvent], None] | None = None,
    ) -> dict[str, Any]:
        """Run analyses on a finished MLflow run's checkpoint, logging into that same run;
        ``on_progress`` hears as each starts, how far it is, and when it finished."""
        try:
            workdir = self.settings.run_workdir(run_id)  # a run id given on the command line
        except UnsafePathKeyError as exc:
            raise RunFailedError(f"not an MLflow run id: {exc}") from None
        tracker = MlflowTracker(
            self.settings.tracking_uri, self.settings.mlflow_experiment, run_id=run_id
        )
        try:
            fetched = Path(tracker.download("checkpoints/model.pt", workdir / "fetched"))
            history_file = Path(tracker.download("history.json", workdir / "fetched"))
        except MlflowException as exc:
            raise RunFailedError(f"run {run_id} has no finished checkpoint: {exc}") from None
        checkpoint = load_checkpoint(fetched)
        spec = ExperimentSpec.from_stored(checkpoint["spec"])
        metrics = analyze_checkpoint(
            spec,
            checkpoint["model"],
            analyses,
            tracker,
            workdir=workdir,
            history=json.loads(history_file.read_text()),
            data=self.dataset(spec),
            on_progress=on_progress,
        )
        return {**metrics, "mlflow_run_id": run_id}


def local_results(
    runs: Sequence[tuple[str, Mapping[str, Any]]],
    metrics: Sequence[str],
    predictions: Mapping[str, StoredPrediction | None],
    baseline: str | None = None,
) -> dict[str, Any]:
    """Runs made here ((configuration, final metrics with ``mlflow_run_id``)) in the shape
    of the server's sweep results: mean ± std per metric, each configuration's instability
    from the runs' test predictions (by run id), each row against ``baseline`` (the first
    by default; UnknownBaselineError for neither a configuration nor a row's index)."""
    from service import sweeps  # SQLAlchemy only when a grid's table is printed

    rows = compare(runs, metrics)
    experiments: dict[str, int] = {}
    by_configuration: dict[str, dict[str, StoredPrediction | None]] = {}
    for configuration, run in runs:
        experiments[configuration] = experiments.get(configuration, 0) + 1
        run_id = str(run.get("mlflow_run_id"))
        by_configuration.setdefault(configuration, {})[run_id] = predictions.get(run_id)
    plain = sweeps.SweepResults(list(metrics), rows, experiments, dict(experiments))
    results = sweeps.analysed(plain, by_configuration, baseline)
    return {
        "metrics": results.metrics,
        "rows": sweeps.results_records(results),
        "baseline": results.baseline,
    }
