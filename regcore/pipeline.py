"""The one entry point that turns a spec into results: train, evaluate, log.

``run(spec, tracker, workdir=...)`` trains (resuming from ``workdir/last.pt`` when it
exists), evaluates the final model on the test and validation splits and on a fixed
subset of the training split (``training.final_train_eval`` samples), and
logs params, tags, per-epoch metrics, the final metrics, the spec and the checkpoints
to the tracker, then runs the spec's analyses in their order (a ``plots`` analysis
listed after ``boundary`` draws the planes that analysis measured) and logs their
metrics and files. ``run_stacked(specs, trackers, workdirs=...)`` does the same for
each of several specs trained together (``regcore.stacked``): to each its own tracker,
workdir, metrics, checkpoints and analyses.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import regcore
from regcore.analysis.base import AnalysisContext, AnalysisEvent
from regcore.data import DataSplits, Split, load_dataset
from regcore.instability import StoredPrediction, labels_checksum
from regcore.provenance import git_tags
from regcore.registries import ANALYSES
from regcore.spec import AnalysisSpec, ExperimentSpec
from regcore.stacked import train_stacked
from regcore.tracking import MemoryTracker, Tracker
from regcore.train import (
    Callbacks,
    TrainResult,
    best_epoch_of,
    build_model,
    evaluate,
    resolve_device,
    train,
)


@dataclass
class RunResult:
    metrics: dict[str, Any]  # final metrics (see ``final_metrics``)
    history: list[dict[str, float]]
    workdir: Path
    model_path: Path
    # the final model's predicted test labels (for instability across seeds); not a metric
    predictions: StoredPrediction | None = None


def environment_tags() -> dict[str, str]:
    """Versions that make a number reproducible, logged with every run: the code's git
    commit too, when it runs from a git checkout."""
    return {
        "regbench.version": regcore.__version__,
        "python.version": platform.python_version(),
        "torch.version": torch.__version__,
        **git_tags(),
    }


def run(
    spec: ExperimentSpec,
    tracker: Tracker | None = None,
    *,
    workdir: Path,
    data: DataSplits | None = None,
    callbacks: Callbacks | None = None,
    resume: bool = True,
) -> RunResult:
    tracker = tracker or MemoryTracker()
    logging = _open_tracked_run(spec, tracker, workdir, callbacks or Callbacks())
    data = data if data is not None else load_dataset(spec.dataset, spec.training.seed)
    result = train(spec, data, workdir=workdir, callbacks=logging, resume=resume)
    return _conclude(spec, tracker, workdir, result, data)


def run_stacked(
    specs: Sequence[ExperimentSpec],
    trackers: Sequence[Tracker | None] | None = None,
    *,
    workdirs: Sequence[Path],
    datas: Sequence[DataSplits | None] | None = None,
    callbacks: Sequence[Callbacks | None] | None = None,
    resume: bool = True,
) -> list[RunResult]:
    """``run`` for specs that train together (``regcore.stacked``, one ``stack_key``):
    each member logs to its own tracker and workdir exactly what ``run`` logs for it,
    and gets its own analyses; one ``RunResult`` per spec, in order."""
    n = len(specs)
    trackers = list(trackers) if trackers is not None else [None] * n
    datas = list(datas) if datas is not None else [None] * n
    callbacks = list(callbacks) if callbacks is not None else [None] * n
    if not len(trackers) == len(workdirs) == len(datas) == len(callbacks) == n:
        raise ValueError("run_stacked needs one tracker, workdir, data and callbacks per spec")
    member_trackers = [tracker or MemoryTracker() for tracker in trackers]
    logging = [
        _open_tracked_run(spec, tracker, workdir, cb or Callbacks())
        for spec, tracker, workdir, cb in zip(
            specs, member_trackers, workdirs, callbacks, strict=True
        )
    ]
    member_datas = [
        data if data is not None else load_dataset(spec.dataset, spec.training.seed)
        for spec, data in zip(specs, datas, strict=True)
    ]
    results = train_stacked(
        specs, member_datas, workdirs=workdirs, callbacks=logging, resume=resume
    )
    return [
        _conclude(spec, tracker, workdir, result, data)
        for spec, tracker, workdir, result, data in zip(
            specs, member_trackers, workdirs, results, member_datas, strict=True
        )
    ]


def _open_tracked_run(
    spec: ExperimentSpec, tracker: Tracker, workdir: Path, callbacks: Callbacks
) -> Callbacks:
    """Write and log the spec, tags and params; the callbacks that also log each epoch."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "spec.yaml"
    spec_path.write_text(spec.to_yaml())

    tracker.set_tags({"spec_hash": spec.spec_hash(), **environment_tags()})
    tracker.log_params(spec.flat_params())
    tracker.log_artifact(spec_path)

    user_on_epoch = callbacks.on_epoch

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        tracker.log_metrics(metrics, step=epoch)
        if user_on_epoch is not None:
            user_on_epoch(epoch, metrics)

    return Callbacks(callbacks.on_step, on_epoch, callbacks.should_cancel)


def _conclude(
    spec: ExperimentSpec, tracker: Tracker, workdir: Path, result: TrainResult, data: DataSplits
) -> RunResult:
    """After training: final metrics, model.pt, metrics.json, history.json, the
    checkpoints and files logged, then the analyses."""
    data = data.to(result.device)
    test_labels: list[torch.Tensor] = []  # (B,) per batch, from the test evaluation's pass
    metrics = final_metrics(spec, result, data, test_labels)
    # reg/* terms are already in the per-epoch history; log each final number once.
    final = {k: float(v) for k, v in metrics.items() if _is_number(v) and not k.startswith("reg/")}
    tracker.log_metrics(final, step=result.epochs_run)

    model_path = workdir / "model.pt"
    torch.save(
        {"spec": spec.model_dump(mode="json"), "model": result.model.state_dict()}, model_path
    )
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (workdir / "history.json").write_text(json.dumps(result.history, indent=1))
    for name in ("model.pt", "last.pt"):
        tracker.log_artifact(workdir / name, "checkpoints")
    for name in ("metrics.json", "history.json"):
        tracker.log_artifact(workdir / name)

    predictions = stored_prediction(test_labels, data.test)
    (workdir / "predictions").mkdir(exist_ok=True)
    np.save(workdir / "predictions" / "test.npy", predictions.labels)
    tracker.log_artifact(workdir / "predictions" / "test.npy", "predictions")

    analysis_metrics = run_analyses(spec, result.model, data, result.history, workdir, tracker)
    tracker.log_metrics(analysis_metrics, step=result.epochs_run)
    metrics.update(analysis_metrics)
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return RunResult(metrics, result.history, workdir, model_path, predictions)


def stored_prediction(batches: Sequence[torch.Tensor], split: Split) -> StoredPrediction:
    """The top-1 labels of a split (the batches ``evaluate`` collected), with the checksum
    of the split's true labels that tells which test set they were predicted on."""
    predicted = torch.cat(list(batches)).cpu().numpy() if batches else np.zeros(0, dtype=np.int64)
    return StoredPrediction(predicted.astype(np.int64), labels_checksum(split.y.cpu().numpy()))


def analyze(
    spec: ExperimentSpec,
    model_state: dict[str, torch.Tensor],
    analyses: list[AnalysisSpec],
    tracker: Tracker | None = None,
    *,
    workdir: Path,
    history: list[dict[str, float]] | None = None,
    data: DataSplits | None = None,
    on_progress: Callable[[AnalysisEvent], None] | None = None,
) -> dict[str, float]:
    """Run analyses on a finished run's weights (``model.pt``) and log them to its tracker;
    ``on_progress`` hears when each starts, how far it is, and when it finished."""
    data = data if data is not None else load_dataset(spec.dataset, spec.training.seed)
    model, _ = build_model(spec, data.info)
    model.load_state_dict(model_state)
    device = resolve_device(spec.training.device)
    model.to(device)
    with_analyses = spec.model_copy(update={"analyses": analyses})
    metrics = run_analyses(
        with_analyses,
        model,
        data.to(device),
        history or [],
        workdir,
        tracker or MemoryTracker(),
        on_progress,
    )
    if tracker is not None:
        tracker.log_metrics(metrics, step=len(history or []))
    return metrics


def run_analyses(
    spec: ExperimentSpec,
    model: torch.nn.Module,
    data: DataSplits,
    history: list[dict[str, float]],
    workdir: Path,
    tracker: Tracker,
    on_progress: Callable[[AnalysisEvent], None] | None = None,
) -> dict[str, float]:
    """Run the spec's analyses in order on the trained model; log their files as they come.
    ``on_progress`` gets an ``AnalysisEvent`` as each starts, reports progress, finishes."""
    model.eval()
    device = next(iter(model.parameters())).device
    # the best epoch from the history itself: a re-analysis has only history.json
    early = spec.training.early_stopping
    ctx = AnalysisContext(
        model, data, device, workdir / "analyses", history, spec,
        best_epoch=best_epoch_of(spec.training, history),
        restored_best=early is not None and early.restore_best,
    )  # fmt: skip
    metrics: dict[str, float] = {}
    total = len(spec.analyses)
    for index, analysis_spec in enumerate(spec.analyses, start=1):
        analysis = ANALYSES.get(analysis_spec.name).target(analysis_spec.params)
        started = time.perf_counter()

        def tell(
            fraction: float,
            message: str,
            finished: bool = False,
            index: int = index,
            kind: str = analysis_spec.name,
            started: float = started,
        ) -> None:
            if on_progress is not None:
                seconds = time.perf_counter() - started
                on_progress(AnalysisEvent(index, total, kind, fraction, message, seconds, finished))

        ctx.progress = tell
        tell(0.0, "started")
        outcome = analysis.run(ctx)
        ctx.progress = None
        tell(1.0, "done", finished=True)
        metrics.update(outcome.metrics)
        for path in outcome.artifacts:
            tracker.log_artifact(path, path.parent.relative_to(workdir).as_posix())
    return metrics


TRAIN_EVAL_SUBSET_SEED = 0  # the final train-set subset is the same for every run


def train_eval_subset(size: int, samples: int | None) -> torch.Tensor | None:
    """(k,) sorted indices of the training samples the final train metrics use: a fixed
    random subset of range(size), independent of the run's seed; None means all of them."""
    if samples is None or samples >= size:
        return None
    generator = torch.Generator().manual_seed(TRAIN_EVAL_SUBSET_SEED)
    return torch.randperm(size, generator=generator)[:samples].sort().values


def final_metrics(
    spec: ExperimentSpec,
    result: TrainResult,
    data: DataSplits,
    test_predictions: list[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Clean (eval-mode) loss and accuracy on the test and validation splits and on
    ``training.final_train_eval`` training samples (``train_eval_samples`` says how many;
    0 leaves out train_loss and train_accuracy), plus what identifies the run. Given
    ``test_predictions``, the test pass appends its top-1 labels to it."""
    batch, model = spec.training.eval_batch_size, result.model
    metrics: dict[str, Any] = {}
    metrics["test_loss"], metrics["test_accuracy"] = evaluate(
        model, data.test, batch, test_predictions
    )
    samples = spec.training.final_train_eval
    metrics["train_eval_samples"] = 0
    if samples != 0:
        train_split = data.train
        subset = train_eval_subset(len(train_split), samples)
        if subset is not None:
            index = subset.to(train_split.x.device)
            train_split = Split(train_split.x[index], train_split.y[index])  # (k, ...), (k,)
        metrics["train_eval_samples"] = len(train_split)
        metrics["train_loss"], metrics["train_accuracy"] = evaluate(model, train_split, batch)
    if data.val is not None:
        metrics["val_loss"], metrics["val_accuracy"] = evaluate(model, data.val, batch)
    last = result.history[-1] if result.history else {}
    for key, value in last.items():
        if key.startswith("reg/"):
            metrics[key] = value
    metrics["epochs"] = result.epochs_run
    metrics["best_epoch"] = result.best_epoch
    metrics["stopped_early"] = result.stopped_early
    metrics["seed"] = spec.training.seed
    metrics["spec_hash"] = spec.spec_hash()
    metrics["train_seconds"] = sum(row.get("epoch_seconds", 0.0) for row in result.history)
    return metrics


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
