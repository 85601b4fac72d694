"""Local commands: run a spec (or a whole grid) in this process, list the catalog.

``regbench run FILE`` validates everything first, so an invalid spec or grid exits
with status 2 and writes nothing. Each run gets its own MLflow run and working
directory; the final table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from client.cli import print_results, stdout_console
from client.overrides import KeysAt, OverrideError, apply_to_file, keys_from_document
from client.tables import TABLE_METRICS
from regcore import grid as grids
from regcore.analysis.base import as_json_value
from regcore.significance import UnknownBaselineError, resolve_baseline
from regcore.spec import AnalysisSpec, ExperimentSpec, SpecError, format_validation_error

if TYPE_CHECKING:
    from regcore.analysis.base import AnalysisEvent
    from service.db import Database
    from service.local_runs import LocalRunner
    from service.settings import Settings

EXIT_INVALID = 2
EXIT_FAILED = 1
NON_DETERMINISTIC = ("train_seconds",)  # left out of --json so repeated runs compare equal


@dataclass(frozen=True)
class PlannedRun:
    configuration: str
    spec: ExperimentSpec


def load_plan(path: Path, overrides: tuple[str, ...] = ()) -> list[PlannedRun]:
    """Read a spec or a grid file, apply ``--set`` overrides (to a grid's base), and
    validate every spec in it (raises on the first bad; OverrideError on a bad override)."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML or JSON: {exc}") from None
    if not isinstance(document, Mapping):
        raise SpecError(f"{path}: expected a spec or a grid (a mapping) at the top level")
    if overrides:
        document = apply_to_file(document, overrides, _spec_keys(document))
    if not grids.is_grid(document):
        spec = ExperimentSpec.model_validate(document)
        return [PlannedRun(spec.name, spec)]
    plan = []
    for number, point in enumerate(grids.expand(document["base"], document["grid"])):
        try:
            spec = ExperimentSpec.model_validate(point.spec)
        except ValidationError as exc:
            raise SpecError(
                f"grid point {number} ({grids.describe(point.values)}) is invalid:\n"
                + format_validation_error(exc)
            ) from None
        plan.append(PlannedRun(point.configuration, spec))
    return plan


def _spec_keys(document: Mapping[str, Any]) -> KeysAt | None:
    """The keys each level of the spec has, defaults included (a grid: its first point's),
    for ``--set``; None when the file is invalid before the overrides (they may fix it)."""
    try:
        if grids.is_grid(document):
            point = next(iter(grids.expand(document["base"], document["grid"])))
            spec = ExperimentSpec.model_validate(point.spec)
        else:
            spec = ExperimentSpec.model_validate(document)
    except (ValidationError, grids.GridError, KeyError, StopIteration, TypeError):
        return None
    return keys_from_document(spec.model_dump(mode="json"))


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print final metrics as JSON on stdout.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Override REGBENCH_DATA_DIR.")
@click.option("--device", help="Override training.device (auto, cpu, cuda, cuda:N, mps).")
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option(
    "--baseline",
    metavar="CONFIGURATION",
    help="The row the others are compared with: a configuration, or a row's index from 0 "
    "(default: the first).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="PATH=VALUE",
    help="Change the spec (a grid: its base) before it runs, e.g. training.epochs=2 or "
    "regularizers.0.weight=0.1; VALUE is YAML; repeatable. A grid's own axes cannot be set.",
)
def run(
    path: Path,
    as_json: bool,
    data_dir: Path | None,
    device: str | None,
    quiet: bool,
    baseline: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Run a spec (or a grid: {base, grid}) in-process and print the results: mean ± std
    over seeds, the instability of each configuration's predictions across seeds, and each
    configuration against the baseline row (difference, 95% CI, Holm-corrected p)."""
    err = Console(stderr=True)
    try:
        plan = load_plan(path, overrides)
        if device is not None:
            plan = [PlannedRun(p.configuration, _with_device(p.spec, device)) for p in plan]
    except ValidationError as exc:
        err.print(f"[red]invalid spec {path}:[/red]", highlight=False)
        err.print(format_validation_error(exc), markup=False, highlight=False)
        sys.exit(EXIT_INVALID)
    except OverrideError as exc:
        click.secho(str(exc), fg="red", err=True)  # unwrapped: a long list of keys stays whole
        sys.exit(EXIT_INVALID)
    except (SpecError, grids.GridError) as exc:
        err.print(f"[red]invalid spec {path}:[/red]", highlight=False)
        err.print(str(exc), markup=False, highlight=False)
        sys.exit(EXIT_INVALID)

    from service.local_runs import LocalRunner, local_results
    from service.settings import Settings

    if baseline is not None and not as_json:  # a name the grid lacks: say so before training
        configurations = list(dict.fromkeys(p.configuration for p in plan))
        try:
            resolve_baseline(configurations, baseline)
        except UnknownBaselineError as exc:
            err.print(f"[red]--baseline:[/red] {exc}", highlight=False)
            sys.exit(EXIT_INVALID)
    settings = Settings(data_dir=data_dir) if data_dir is not None else Settings()
    runner = LocalRunner(settings)
    results = _run_all(plan, runner, err, quiet)

    if as_json:
        runs = [_deterministic(metrics) for _, metrics in results]
        payload: Any = runs[0] if len(plan) == 1 else runs
        click.echo(json.dumps(payload, sort_keys=True, allow_nan=False))
    else:
        answer = local_results(results, TABLE_METRICS, runner.predictions, baseline)
        print_results(answer, title="regbench results (mean ± std over seeds)")
        stdout_console().print(run_ids_table(plan, results, settings))  # the runs behind them


def run_ids_table(
    plan: list[PlannedRun], results: list[tuple[str, dict[str, Any]]], settings: Settings
) -> Table:
    """Each run's MLflow run id (what `regbench analyze` takes) and, with
    REGBENCH_MLFLOW_UI_URL, its link in the MLflow UI."""
    links = _run_links(settings, [str(m.get("mlflow_run_id")) for _, m in results])
    table = Table(
        title="MLflow runs (regbench analyze RUN_ID --analysis KIND)", title_justify="left"
    )
    table.add_column("configuration")
    table.add_column("seed", justify="right")
    table.add_column("MLflow run", no_wrap=True)
    if links:
        table.add_column("MLflow UI", no_wrap=True)
    for planned, (configuration, metrics) in zip(plan, results, strict=False):
        run_id = str(metrics.get("mlflow_run_id"))
        cells = [configuration, str(planned.spec.training.seed), run_id]
        table.add_row(*cells, *([links.get(run_id, "")] if links else []))
    return table


def _run_links(settings: Settings, run_ids: list[str]) -> dict[str, str]:
    if not settings.mlflow_ui_url:
        return {}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    base = settings.mlflow_ui_url.rstrip("/")
    return {
        run_id: f"{base}/#/experiments/{client.get_run(run_id).info.experiment_id}/runs/{run_id}"
        for run_id in run_ids
    }


def _with_device(spec: ExperimentSpec, device: str) -> ExperimentSpec:
    data = spec.model_dump(mode="json")
    data["training"]["device"] = device
    return ExperimentSpec.model_validate(data)


def _deterministic(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics fit for --json: no wall-clock times, nan/inf as null (strict JSON)."""
    return {k: as_json_value(v) for k, v in metrics.items() if k not in NON_DETERMINISTIC}


def _run_all(
    plan: Sequence[Any], runner: LocalRunner, err: Console, quiet: bool
) -> list[tuple[str, dict[str, Any]]]:
    """Run every planned point in order under one progress display; (configuration,
    metrics) per point. The first failure stops everything with its reason (exit 1)."""
    from service.local_runs import RunFailedError

    results: list[tuple[str, dict[str, Any]]] = []
    with _progress(err, quiet) as progress:
        overall = progress.add_task("runs", total=len(plan), status="")
        for number, planned in enumerate(plan, start=1):
            label = f"[{number}/{len(plan)}] {planned.configuration}"
            try:
                metrics = runner.run(planned.spec, progress, label)
            except RunFailedError as exc:
                progress.stop()
                err.print(f"[red]{label} failed:[/red] {exc}", highlight=False)
                sys.exit(EXIT_FAILED)
            results.append((planned.configuration, metrics))
            progress.advance(overall)
    return results


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the params' JSON schemas.")
def catalog(as_json: bool) -> None:
    """List datasets, models and regularizers with their params."""
    from regcore.catalog import build_catalog

    entries = build_catalog()
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    console = Console()
    for kind, components in entries.items():
        table = Table(title=kind, show_lines=False, title_justify="left")
        table.add_column("name")
        table.add_column("params (default)")
        table.add_column("what it is")
        for component in components:
            params = ", ".join(
                f"{name}={json.dumps(field.get('default'))}"
                for name, field in component["params"].get("properties", {}).items()
            )
            table.add_row(component["name"], params, component["summary"])
        console.print(table)


@click.command()
@click.argument("run_id")
@click.option(
    "--analysis",
    "analyses",
    multiple=True,
    required=True,
    help="An analysis kind (boundary) or a spec entry as YAML/JSON ({kind: boundary, planes: 10}).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Override REGBENCH_DATA_DIR.")
def analyze(run_id: str, analyses: tuple[str, ...], as_json: bool, data_dir: Path | None) -> None:
    """Run analyses on a finished run's checkpoint and log them into that MLflow run."""
    err = Console(stderr=True)
    try:
        entries = [yaml.safe_load(text) for text in analyses]
        parsed = TypeAdapter(list[AnalysisSpec]).validate_python(entries)
    except (yaml.YAMLError, ValidationError) as exc:
        err.print("[red]invalid --analysis:[/red]", highlight=False)
        message = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        err.print(message, markup=False, highlight=False)
        sys.exit(EXIT_INVALID)

    from service.local_runs import LocalRunner, RunFailedError
    from service.settings import Settings

    settings = Settings(data_dir=data_dir) if data_dir is not None else Settings()
    err.print(f"run {run_id}: fetching its checkpoint and data", markup=False, highlight=False)
    try:
        with AnalysisFeedback(err) as feedback:
            metrics = LocalRunner(settings).analyze(run_id, parsed, feedback.show)
    except RunFailedError as exc:
        err.print(f"[red]analysis failed:[/red] {exc}", highlight=False)
        sys.exit(EXIT_FAILED)
    if as_json:
        click.echo(json.dumps(_deterministic(metrics), sort_keys=True, allow_nan=False))
        return
    table = Table(title=f"analyses of run {run_id}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(metrics.items()):
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


class AnalysisFeedback:
    """``regbench analyze``'s progress on stderr: a line as each analysis starts and as it
    finishes (with its time); on a terminal a bar in between, off one (a log) a line
    with its progress at most every ``LOG_EVERY_S`` seconds."""

    LOG_EVERY_S = 10.0

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task: TaskID | None = None
        self.logged_at = 0.0

    def __enter__(self) -> AnalysisFeedback:
        self.bar.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.bar.stop()

    def show(self, event: AnalysisEvent) -> None:
        name = f"analysis {event.index}/{event.total} {event.kind}"
        if event.finished:
            if self.task is not None:
                self.bar.remove_task(self.task)
                self.task = None
            self._line(f"{name}: done in {event.seconds:.1f} s")
        elif self.task is None:
            self._line(f"{name}: started")
            self.task = self.bar.add_task(name, total=1.0, status="")
            self.logged_at = time.monotonic()
        else:
            self.bar.update(self.task, completed=event.fraction, status=event.message)
            if (
                not self.console.is_terminal
                and time.monotonic() - self.logged_at >= self.LOG_EVERY_S
            ):
                self._line(f"{name}: {event.fraction:.0%} {event.message} ({event.seconds:.0f} s)")

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        self.logged_at = time.monotonic()


@click.group()
def db() -> None:
    """Job-store schema: upgrade, downgrade, current (REGBENCH_DATABASE_URL)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Migrate the job store up to REVISION (default: the newest)."""
    from service.schema import upgrade_database
    from service.settings import Settings

    settings = Settings()
    upgrade_database(settings.job_store_url, revision)
    click.echo(f"job store at {revision}: {_safe_url(settings.job_store_url)}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate the job store down to REVISION (``base`` drops every table)."""
    from service.schema import downgrade_database
    from service.settings import Settings

    settings = Settings()
    downgrade_database(settings.job_store_url, revision)
    click.echo(f"job store at {revision}: {_safe_url(settings.job_store_url)}")


@db.command("current")
def db_current() -> None:
    """Print the job store's revision and the newest one."""
    from service.db import make_engine
    from service.schema import current_revision, head_revision
    from service.settings import Settings

    engine = make_engine(Settings().job_store_url)
    click.echo(f"current: {current_revision(engine)}  newest: {head_revision()}")
    engine.dispose()


def _safe_url(url: str) -> str:
    from service.redact import mask_uri

    return mask_uri(url)


@click.group()
def users() -> None:
    """Users and their API tokens, in the job store (REGBENCH_DATABASE_URL).

    While no user exists the API runs everything as one local user (the embedded
    default); once one does, writes need a token (reads too with REGBENCH_AUTH_READS).
    """


def _users_session() -> Database:
    """The job store, which must be at the newest migration."""
    from service.db import Database
    from service.schema import SchemaOutdatedError, assert_schema_current
    from service.settings import Settings

    database = Database(Settings().job_store_url)
    try:
        assert_schema_current(database.engine)
    except SchemaOutdatedError as exc:
        database.dispose()
        raise click.ClickException(str(exc)) from None
    return database


def _print_token(name: str, token: str, what: str) -> None:
    # The token on stdout alone (for `$(regbench users add ann)`), the words on stderr.
    click.echo(f"{what} {name!r}; its API token (shown once, only its hash is kept):", err=True)
    click.echo(token)
    click.echo(
        "send it as `Authorization: Bearer <token>`, or REGBENCH_TOKEN for the client", err=True
    )


@users.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May cancel anyone's work.")
def users_add(name: str, admin: bool) -> None:
    """Add user NAME and print their token once."""
    from service.users import UserError, add_user

    database = _users_session()
    try:
        with database.session() as session:
            token = add_user(session, name, admin=admin)
            session.commit()
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        database.dispose()
    _print_token(name, token, "added admin" if admin else "added user")


@users.command("token")
@click.argument("name")
def users_token(name: str) -> None:
    """Give NAME a new token (the old one stops working) and print it once."""
    from service.users import UserError, new_user_token

    database = _users_session()
    try:
        with database.session() as session:
            token = new_user_token(session, name)
            session.commit()
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        database.dispose()
    _print_token(name, token, "new token for")


@users.command("remove")
@click.argument("name")
def users_remove(name: str) -> None:
    """Remove user NAME: their token stops working; their work keeps them as owner."""
    from service.users import UserError, remove_user

    database = _users_session()
    try:
        with database.session() as session:
            remove_user(session, name)
            session.commit()
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        database.dispose()
    click.echo(f"removed user {name!r}")


@users.command("list")
def users_list() -> None:
    """List users (names, admin flags, creation times; never tokens)."""
    from service.users import list_users

    database = _users_session()
    try:
        with database.session() as session:
            rows = [(u.name, u.admin, u.created_at) for u in list_users(session)]
    finally:
        database.dispose()
    if not rows:
        click.echo("no users: the API runs every request as the local user, without tokens")
    for name, admin, created_at in rows:
        click.echo(f"{name}\t{'admin' if admin else 'user'}\t{created_at:%Y-%m-%d %H:%M:%S}")


@click.command()
@click.argument("name")
@click.option(
    "--budget",
    type=click.Choice(["reduced", "full"]),
    default="reduced",
    show_default=True,
    help="reduced: the documented CPU budget (regcore/reproductions.py); full: the grid as "
    "published (hours of GPU: on a cluster use `regbench submit grids/<grid> --wait`).",
)
@click.option(
    "--data-root",
    type=click.Path(path_type=Path),
    help="dataset.root of every run (default: $REGBENCH_DATA_ROOT, else the grid's ./data).",
)
@click.option("--data-dir", type=click.Path(path_type=Path), help="Override REGBENCH_DATA_DIR.")
@click.option("--device", help="Override training.device (auto, cpu, cuda, cuda:N, mps).")
@click.option("--quiet", is_flag=True, help="No progress display.")
def reproduce(
    name: str,
    budget: str,
    data_root: Path | None,
    data_dir: Path | None,
    device: str | None,
    quiet: bool,
) -> None:
    """Run a published table's grid in-process and print ours beside the published numbers."""
    import datetime
    import os

    from regcore import reproductions

    err = Console(stderr=True)
    try:
        reproduction = reproductions.get(name)
    except reproductions.UnknownReproductionError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        sys.exit(EXIT_INVALID)
    root = data_root or (
        Path(os.environ["REGBENCH_DATA_ROOT"]) if "REGBENCH_DATA_ROOT" in os.environ else None
    )
    plan = []
    try:
        for point in reproductions.plan(reproduction, budget):  # type: ignore[arg-type]
            spec = dict(point.spec)
            if root is not None:
                spec["dataset"] = {**spec["dataset"], "root": str(root)}
            if device is not None:
                spec["training"] = {**spec["training"], "device": device}
            plan.append(PlannedRun(point.configuration, ExperimentSpec.model_validate(spec)))
    except ValidationError as exc:
        err.print(f"[red]invalid grid {reproduction.grid}:[/red]", highlight=False)
        err.print(format_validation_error(exc), markup=False, highlight=False)
        sys.exit(EXIT_INVALID)

    from regcore.runtime import resolve_device
    from service.local_runs import LocalRunner
    from service.settings import Settings

    runner = LocalRunner(Settings(data_dir=data_dir) if data_dir is not None else Settings())
    results = _run_all(plan, runner, err, quiet)

    first = plan[0].spec
    used = resolve_device(first.training.device)
    threads = f", {torch_threads()} CPU threads" if used.type == "cpu" else ""
    budget_lines = [
        f"budget: {budget}"
        + (f" ({reproduction.reduced.description})" if budget == "reduced" else " (as published)"),
        f"epochs: {sorted({p.spec.training.epochs for p in plan})}, training images: "
        f"{len(runner.dataset(first).train):,}, seeds: "
        f"{sorted({p.spec.training.seed for p in plan})}, device: {used}{threads}",
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d}, grid: grids/{reproduction.grid}",
    ]
    rows = reproductions.summarize(reproduction, results)
    click.echo(reproductions.format_report(reproduction, rows, budget_lines))


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()
