"""Sweep reports: built once a sweep has finished, logged as a sweep-level MLflow run.

Three places may build one, and the claim in ``sweeps.claim_report`` lets exactly one
of them do it: the worker that finished a sweep's last job, the reconciler (for a
sweep whose last worker died before building it), and ``POST /sweeps/{id}/report``
(a rebuild on demand). The run holds ``report.png``, ``report.html`` (self-contained),
``results.csv`` and ``results.json``, tagged with the sweep's id, in the sweep's
MLflow experiment beside its experiments' runs. The learning curves come from the
members' per-epoch metric histories in MLflow (the job store keeps final metrics only);
the page links each member's run in the MLflow UI (``Settings.mlflow_ui_url``) and shows
each configuration's stored spec.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.orm import Session

from regcore.provenance import git_tags
from regcore.report import HISTORY_KEYS, History, RunLink, build_report
from service import jobstore, sweeps
from service.db import Database
from service.settings import Settings
from service.tables import Sweep, SweepMember, utcnow
from service.tracking import (
    REPORT_RUN_KIND,
    RUN_KIND_TAG,
    check_run_location,
    ensure_experiment,
)

log = logging.getLogger(__name__)

REPORT_FILES = ("report.png", "report.html", "results.csv", "results.json")
SWEEP_TAG = "regbench.sweep_id"


class SweepNotFinishedError(RuntimeError):
    """A report needs every job of the sweep to be final."""


@dataclass(frozen=True)
class BuiltReport:
    sweep_id: str
    run_id: str | None
    error: str | None


def build_finished(settings: Settings, db: Database, sweep_ids: list[str]) -> list[BuiltReport]:
    """Build the report of each of these sweeps that has finished and has none yet."""
    with db.session() as session:
        ready = sweeps.sweeps_needing_report(
            session, sweeps.stale_report_cutoff(utcnow()), among=sweep_ids
        )
    built: list[BuiltReport] = []
    for sweep_id in ready:
        try:
            report = build(settings, db, sweep_id)
        except SweepNotFinishedError:  # analyses were added meanwhile
            continue
        if report is not None:
            built.append(report)
    return built


def build(
    settings: Settings, db: Database, sweep_id: str, *, rebuild: bool = False
) -> BuiltReport | None:
    """Claim, render, log to MLflow, record; None if another builder holds the claim (or
    the report exists and ``rebuild`` is off). Failures are recorded on the sweep."""
    with db.session() as session:
        sweep = sweeps.load(session, sweep_id)
        if sweep is None:
            raise LookupError(f"no sweep with id {sweep_id!r}")
        if not sweeps.is_finished(sweep):
            raise SweepNotFinishedError(
                f"sweep {sweep_id} has unfinished jobs; its report is built when they finish"
            )
        claimed = sweeps.claim_report(
            session, sweep_id, stale_before=sweeps.stale_report_cutoff(utcnow()), rebuild=rebuild
        )
        session.commit()
        if not claimed:
            return None
        try:
            run_id = _render_and_log(settings, session, sweep)
            error = None
        except Exception as exc:  # recorded on the sweep; the API shows it
            log.exception("sweep %s: report failed", sweep_id)
            run_id, error = None, f"{type(exc).__name__}: {exc}"
        sweeps.finish_report(session, sweep_id, run_id=run_id, error=error)
        session.commit()
    log.info("sweep %s: report %s", sweep_id, "failed" if error else f"logged (run {run_id})")
    return BuiltReport(sweep_id, run_id, error)


def member_histories(
    client: MlflowClient, members: Sequence[SweepMember], *, threads: int = 8
) -> dict[str, list[History]]:
    """configuration -> each member run's per-epoch history of the learning curves' metrics,
    read from MLflow (the job store keeps final metrics only): one request per run and
    metric, ``threads`` at a time. A run MLflow cannot read is left out (logged)."""
    wanted = [(m.configuration, m.experiment.mlflow_run_id) for m in members]
    requests = [(run_id, key) for _, run_id in wanted if run_id for key in HISTORY_KEYS]

    def fetch(request: tuple[str, str]) -> list[tuple[float, float]] | None:
        run_id, key = request
        try:
            points = client.get_metric_history(run_id, key)
        except MlflowException as exc:
            log.warning("report: no %s history for run %s: %s", key, run_id, exc)
            return None
        latest = {int(p.step): float(p.value) for p in sorted(points, key=lambda p: p.timestamp)}
        return sorted((float(step), value) for step, value in latest.items())

    with ThreadPoolExecutor(max_workers=threads) as pool:
        fetched = dict(zip(requests, pool.map(fetch, requests), strict=True))
    histories: dict[str, list[History]] = {}
    for configuration, run_id in wanted:
        if not run_id:
            continue
        run = {key: points for key in HISTORY_KEYS if (points := fetched[(run_id, key)])}
        if run:
            histories.setdefault(configuration, []).append(run)
    return histories


def run_links(
    members: Sequence[SweepMember], ui_url: str | None
) -> tuple[dict[str, list[RunLink]], str]:
    """configuration -> its runs, linked into the MLflow UI, and a note on where links lead:
    absolute with ``REGBENCH_MLFLOW_UI_URL`` set, else relative to the MLflow UI's root."""
    runs: dict[str, list[RunLink]] = {}
    for member in sorted(members, key=lambda m: m.position):
        experiment = member.experiment
        path = (
            f"#/experiments/{experiment.mlflow_experiment_id}/runs/{experiment.mlflow_run_id}"
            if experiment.mlflow_experiment_id and experiment.mlflow_run_id
            else None
        )
        url = f"{ui_url.rstrip('/')}/{path}" if ui_url and path else path
        state = str(jobstore.experiment_status(experiment))
        runs.setdefault(member.configuration, []).append(
            RunLink(f"seed {member.seed}", experiment.mlflow_run_id, url, state)
        )
    note = (
        f"Links open the runs in the MLflow UI at {ui_url}."
        if ui_url
        else "The MLflow UI's address is not configured (REGBENCH_MLFLOW_UI_URL): the links "
        "are paths relative to the MLflow UI; they work once this page is placed under its "
        "address, and the run ids find the runs there."
    )
    return runs, note


def configuration_specs(members: Sequence[SweepMember]) -> dict[str, str]:
    """configuration -> its first member's spec as YAML, the seeds of all members noted."""
    seeds: dict[str, list[int]] = {}
    first: dict[str, SweepMember] = {}
    for member in sorted(members, key=lambda m: m.position):
        seeds.setdefault(member.configuration, []).append(member.seed)
        first.setdefault(member.configuration, member)
    return {
        configuration: (
            f"# the spec of seed {member.seed}; the runs differ only in training.seed: "
            f"{', '.join(str(s) for s in seeds[configuration])}\n"
            + yaml.safe_dump(member.experiment.spec, sort_keys=False, allow_unicode=True)
        )
        for configuration, member in first.items()
    }


def _render_and_log(settings: Settings, session: Session, sweep: Sweep) -> str:
    results = sweeps.results(sweep)
    progress = sweeps.progress(sweep, expected_s={}, workers=1)
    counted = ", ".join(f"{n} {state}" for state, n in progress.experiments.items() if n)
    subtitle = f"sweep {sweep.id}: {sweep.size} experiments ({counted})"
    counts = {
        configuration: (results.succeeded[configuration], total)
        for configuration, total in results.experiments.items()
    }
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    members = list(sweep.members)
    runs, links_note = run_links(members, settings.mlflow_ui_url)
    report = build_report(
        f"regbench sweep: {sweep.name}", results.rows, results.metrics, counts=counts,
        subtitle=subtitle, versus=results.versus, baseline=results.baseline,
        histories=member_histories(client, members), runs=runs,
        specs=configuration_specs(members), links_note=links_note,
    )  # fmt: skip
    experiment_id = sweep.mlflow_experiment_id or ensure_experiment(
        client, settings.mlflow_experiment, settings.default_artifact_location
    )
    run = client.create_run(
        experiment_id,
        run_name=f"report {sweep.name}",
        tags={SWEEP_TAG: sweep.id, RUN_KIND_TAG: REPORT_RUN_KIND, **git_tags()},
    )
    check_run_location(client, run, settings.local_artifact_root)
    run_id = run.info.run_id
    try:
        with tempfile.TemporaryDirectory(prefix="regbench-report-") as directory:
            folder = Path(directory)
            (folder / "report.png").write_bytes(report.png)
            (folder / "report.html").write_text(report.html, encoding="utf-8")
            (folder / "results.csv").write_text(sweeps.results_csv(results), encoding="utf-8")
            records = {
                "sweep_id": sweep.id,
                "metrics": results.metrics,
                "rows": sweeps.results_records(results),
                "baseline": results.baseline,
            }
            (folder / "results.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
            client.log_artifacts(run_id, directory)
        client.log_batch(run_id, tags=[RunTag("regbench.sweep_status", progress.status)])
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
