"""The ``regbench`` command.

Commands that talk to a regbench server (submit, status, results, artifacts, report,
cancel, retry) use HTTP only and take ``--server`` and ``--token``. Commands that run work on
this machine (``run``, ``catalog``, ``serve``...) live in ``service`` and are imported
only when called, so the client itself never loads torch, a database or MLflow.

Exit status: 0 done, 1 the server is unreachable or refused, or work failed,
2 invalid input (a bad file, or the server's 422).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import click
import yaml
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from client.overrides import KeysAt, OverrideError, apply_to_file, keys_from_schema
from client.remote import FINISHED, RegbenchClient, ServerError, path_inside
from client.tables import (
    baseline_markdown,
    eta_text,
    experiment_view,
    experiments_table,
    format_size,
    metrics_table,
    mlflow_lines,
    overview,
    results_markdown,
    results_view,
    select_metrics,
    state_counts,
    sweep_status,
)

DEFAULT_SERVER = "http://127.0.0.1:8000"
EXIT_FAILED = 1
EXIT_INVALID = 2
# Off a terminal rich would wrap at 80 columns; files and pipes get every column instead.
NOT_A_TERMINAL_WIDTH = 1000
# Off a terminal a progress line is printed when it changes, its ETA alone at most this often.
OFF_TERMINAL_REPEAT_S = 60.0
# How long `status --watch` waits for a finished sweep's report to start being built.
REPORT_START_GRACE_S = 30.0

LOCAL_COMMANDS = {
    "run": ("service.cli", "run", "Run a spec or a grid here, in-process, and print results."),
    "reproduce": (
        "service.cli",
        "reproduce",
        "Run a published table's grid here and print it beside the published numbers.",
    ),
    "analyze": ("service.cli", "analyze", "Run analyses on a finished run's checkpoint."),
    "catalog": ("service.cli", "catalog", "List datasets, models and regularizers with params."),
    "db": ("service.cli", "db", "Job-store schema: upgrade, downgrade, current."),
    "users": ("service.cli", "users", "Users and API tokens: add, list, token, remove."),
    "serve": ("service.serve", "serve", "Run the API, a worker and the MLflow UI (embedded)."),
    "worker": ("service.worker_commands", "worker", "Start Celery workers: one per GPU, or cpu."),
    "reconcile": (
        "service.worker_commands",
        "reconcile",
        "Re-enqueue lost jobs and requeue dead workers' jobs.",
    ),
}


class RegbenchGroup(click.Group):
    """A click group whose local commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LOCAL_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LOCAL_COMMANDS:
            module_name, attribute, _ = LOCAL_COMMANDS[cmd_name]
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Describe local commands without importing them (help stays fast).
        rows = [(name, help_text) for name, (_, _, help_text) in LOCAL_COMMANDS.items()]
        rows += [
            (name, command.get_short_help_str())
            for name, command in self.commands.items()
            if name not in LOCAL_COMMANDS
        ]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=RegbenchGroup)
@click.version_option(package_name="regbench")
def main() -> None:
    """regbench: benchmark neural-network regularizers, locally or on a cluster."""


# --------------------------------------------------------------------------- plumbing


def make_client(server: str, token: str | None) -> RegbenchClient:
    """The one place remote commands get their client (tests replace it with one whose
    transport is an ``httpx.MockTransport``)."""
    return RegbenchClient(server, token)


def remote_command(command: Callable[..., None]) -> Callable[..., None]:
    """Adds ``--server`` and ``--token``; the command gets a client as its first argument.
    A ServerError becomes its message on stderr: exit 2 for a 422, else 1."""

    @click.option(
        "--server",
        envvar="REGBENCH_SERVER",
        default=DEFAULT_SERVER,
        show_default=True,
        help="The regbench server (or REGBENCH_SERVER).",
    )
    @click.option(
        "--token",
        envvar="REGBENCH_TOKEN",
        help="API token, sent as `Authorization: Bearer` (or REGBENCH_TOKEN).",
    )
    @functools.wraps(command)
    def with_client(*args: Any, server: str, token: str | None, **kwargs: Any) -> None:
        try:
            with make_client(server, token) as client:
                command(client, *args, **kwargs)
        except ServerError as exc:
            fail(str(exc), EXIT_INVALID if exc.invalid_input else EXIT_FAILED)

    return with_client


def fail(message: str, exit_code: int) -> NoReturn:
    # click.secho drops the colour when stderr is not a terminal.
    click.secho(message, fg="red", err=True)
    sys.exit(exit_code)


def stdout_console() -> Console:
    # COLUMNS, when set, is honoured off a terminal too (rich reads it when width is None).
    wide = sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit()
    return Console(width=None if wide else NOT_A_TERMINAL_WIDTH)


def print_results(
    answer: Mapping[str, Any], patterns: Sequence[str] = (), title: str | None = None
) -> None:
    """The results and the comparison with the baseline, fitted to the terminal's width."""
    console = stdout_console()
    console.print(results_view(answer, patterns, console.width, title))


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def read_document(path: Path) -> dict[str, Any]:
    """A spec or a grid file (YAML or JSON); anything unreadable exits with status 2."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", EXIT_INVALID)
    except yaml.YAMLError as exc:
        fail(f"{path} is not valid YAML or JSON:\n{exc}", EXIT_INVALID)
    if not isinstance(document, dict):
        fail(f"{path}: expected a spec or a grid ({{base, grid}}) at the top level", EXIT_INVALID)
    return document


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="PATH=VALUE",
    help="Change the spec (a grid: its base) before it is used, e.g. training.epochs=2 or "
    "regularizers.0.weight=0.1; VALUE is YAML; repeatable. A grid's own axes cannot be set.",
)


def with_overrides(
    document: dict[str, Any], overrides: tuple[str, ...], keys_at: KeysAt | None
) -> dict[str, Any]:
    """The document with ``--set`` applied; a bad override exits with status 2."""
    try:
        return apply_to_file(document, overrides, keys_at)
    except OverrideError as exc:
        fail(str(exc), EXIT_INVALID)


def server_spec_keys(client: RegbenchClient) -> KeysAt | None:
    """The keys a spec may have, from the server's OpenAPI schema (None: unknown, and the
    server's validation has the last word)."""
    try:
        schemas = client.openapi()["components"]["schemas"]
    except (ServerError, KeyError, TypeError, ValueError):
        return None
    return keys_from_schema({"$ref": "#/components/schemas/ExperimentSpec"}, schemas)


def is_grid(document: Mapping[str, Any]) -> bool:
    # Either key makes it a grid file: the server then names the one that is missing.
    return "base" in document or "grid" in document


# --------------------------------------------------------------------------- submit


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="New experiments even for specs already submitted.")
@click.option("--wait", is_flag=True, help="Show progress until done, then print the results.")
@click.option(
    "--poll", "poll_s", type=float, default=2.0, show_default=True, help="Seconds between polls."
)
@set_option
@remote_command
def submit(
    client: RegbenchClient,
    path: Path,
    force: bool,
    wait: bool,
    poll_s: float,
    overrides: tuple[str, ...],
) -> None:
    """Submit a grid (one sweep) or a spec.

    A grid file is {base, grid, name?}: the server expands it; anything else is one spec.
    """
    document = read_document(path)
    if overrides:
        document = with_overrides(document, overrides, server_spec_keys(client))
    if not is_grid(document):
        submit_one(client, document, force, wait, poll_s)
        return
    submitted = client.submit_sweep(document, force)
    sweep_id = submitted["id"]
    click.echo(
        f"sweep {sweep_id}: {submitted['size']} experiments, {submitted['new_experiments']} new"
    )
    if not submitted.get("created", True):
        say_what_resubmitting_left(client.sweep(sweep_id))
    if not wait:
        click.echo(f"follow it with: regbench status {sweep_id} --watch", err=True)
        click.echo(f"its experiment ids: regbench status {sweep_id} --ids", err=True)
        return
    try:
        sweep = watch_sweep(client, sweep_id, stderr_console(), poll_s)
    except KeyboardInterrupt:
        fail(f"stopped watching; the sweep keeps running: regbench status {sweep_id}", 130)
    answer = client.results(sweep_id)
    print_results(answer)
    if unsuccessful := report_unsuccessful(sweep):
        fail(f"{unsuccessful}; see `regbench status {sweep_id}`", EXIT_FAILED)


def say_what_resubmitting_left(sweep: Mapping[str, Any]) -> None:
    """A resubmitted sweep runs nothing again: say so when some of it failed or was
    cancelled, and which command does."""
    if unsuccessful := report_unsuccessful(sweep):
        click.echo(
            f"{unsuccessful}: submitting again runs none of them; "
            f"`regbench retry {sweep['id']}` does (--force would rerun every experiment)",
            err=True,
        )


def submit_one(
    client: RegbenchClient, spec: dict[str, Any], force: bool, wait: bool, poll_s: float
) -> None:
    experiment = client.submit_experiment(spec, force)
    experiment_id, state = experiment["id"], experiment.get("status")
    if experiment.get("created", True):
        novelty = "new"
    elif state in ("failed", "cancelled"):
        novelty = (
            f"already submitted, and {state}: `regbench retry {experiment_id}` runs its "
            f"{state} jobs again (--force: a new experiment)"
        )
    else:
        novelty = f"already submitted, {state} (--force: again)"
    click.echo(f"experiment {experiment_id}: {novelty}")
    for line in mlflow_lines(experiment):
        click.echo(line.plain, err=True)
    if not wait:
        click.echo(f"follow it with: regbench status {experiment_id} --watch", err=True)
        return
    experiment = watch_experiment(client, experiment["id"], stderr_console(), poll_s)
    if experiment["status"] != "succeeded":
        errors = [
            f"{job['kind']}: {job['error']}" for job in experiment["jobs"] if job.get("error")
        ]
        fail("\n".join([f"experiment {experiment['status']}", *errors]), EXIT_FAILED)
    title = (
        f"experiment {experiment['id']} ({experiment.get('configuration') or experiment['name']})"
    )
    stdout_console().print(metrics_table(experiment.get("metrics") or {}, title))
    for line in mlflow_lines(experiment):
        stdout_console().print(line)


def report_unsuccessful(sweep: Mapping[str, Any]) -> str | None:
    """``1 failed, 0 cancelled of 6 experiments``, or None when none failed or was cancelled
    (a cancelled experiment leaves the results incomplete, so it fails the command too)."""
    failed = sweep["experiments"].get("failed", 0)
    cancelled = sweep["experiments"].get("cancelled", 0)
    if not failed and not cancelled:
        return None
    return f"{failed} failed, {cancelled} cancelled of {sweep['size']} experiments"


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.fields[eta]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


class ChangeLog:
    """Progress for a log (off a terminal, where a bar cannot redraw): a line when what it
    says changes; a changed ETA alone at most every ``OFF_TERMINAL_REPEAT_S``."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last: tuple[str, str] | None = None
        self.printed_at = 0.0

    def show(self, line: str, eta: str = "") -> None:
        if self.console.is_terminal or (line, eta) == self.last:
            return
        now = time.monotonic()
        only_eta = self.last is not None and line == self.last[0]
        if only_eta and now - self.printed_at < OFF_TERMINAL_REPEAT_S:
            return
        self.console.print(f"{line}  {eta}" if eta else line, markup=False, soft_wrap=True)
        self.last, self.printed_at = (line, eta), now


def watch_sweep(
    client: RegbenchClient, sweep_id: str, console: Console, poll_s: float = 2.0
) -> dict[str, Any]:
    """A progress bar on ``console`` until the sweep finished; returns the finished sweep.

    Off a terminal (a CI log) a bar cannot redraw, so each change is printed as a line.
    """
    log = ChangeLog(console)
    with _progress(console) as progress:
        task = progress.add_task(f"sweep {sweep_id[:8]}", total=1.0, counts="", eta="")

        def show(sweep: dict[str, Any]) -> None:
            counts = state_counts(sweep["experiments"]).plain
            eta = eta_text(sweep)
            progress.update(task, completed=sweep.get("progress", 0.0), counts=counts, eta=eta)
            log.show(f"sweep {sweep_id}: {sweep.get('progress', 0.0):4.0%}  {counts}", eta)

        sweep = client.wait_sweep(sweep_id, on_update=show, poll_s=poll_s)
    console.print(
        Text.assemble(f"sweep {sweep_id} {sweep['status']}: ", state_counts(sweep["experiments"]))
    )
    return sweep


def watch_experiment(
    client: RegbenchClient, experiment_id: str, console: Console, poll_s: float = 2.0
) -> dict[str, Any]:
    """A progress bar over the experiment's jobs until it finished; returns it."""
    log = ChangeLog(console)
    with _progress(console) as progress:
        task = progress.add_task(f"experiment {experiment_id[:8]}", total=1.0, counts="", eta="")

        def show(experiment: dict[str, Any]) -> None:
            jobs = experiment.get("jobs") or []
            done = sum(
                1.0 if job["state"] in FINISHED else job.get("progress") or 0.0 for job in jobs
            )
            counts: dict[str, int] = {}
            for job in jobs:
                counts[job["state"]] = counts.get(job["state"], 0) + 1
            fraction = done / len(jobs) if jobs else 0.0
            progress.update(task, completed=fraction, counts=f"jobs: {state_counts(counts).plain}")
            log.show(f"experiment {experiment_id}: {fraction:4.0%}  {state_counts(counts).plain}")

        experiment = client.wait_experiment(experiment_id, on_update=show, poll_s=poll_s)
    console.print(f"experiment {experiment_id} {experiment['status']}", markup=False)
    return experiment


# --------------------------------------------------------------------------- status


@main.command()
@click.argument("sweep_id", metavar="[SWEEP|EXPERIMENT]", required=False)
@click.option("--watch", is_flag=True, help="Refresh until the sweep (or every sweep) is done.")
@click.option(
    "--ids", is_flag=True, help="With SWEEP: list its experiments' ids and MLflow runs too."
)
@click.option(
    "--interval", type=float, default=2.0, show_default=True, help="Seconds between refreshes."
)
@click.option(
    "--limit", type=int, default=20, show_default=True, help="Sweeps listed, newest first."
)
@remote_command
def status(
    client: RegbenchClient,
    sweep_id: str | None,
    watch: bool,
    ids: bool,
    interval: float,
    limit: int,
) -> None:
    """Progress of sweeps, running jobs and workers.

    With SWEEP: that sweep's progress, counts, ETA, report and running jobs (--ids: each
    experiment's id and MLflow run). With EXPERIMENT (as `regbench submit SPEC` prints it):
    its jobs, MLflow run and link, metrics. Without: every sweep, then the running jobs
    and the live workers.
    """
    target, first = client.sweep_or_experiment(sweep_id) if sweep_id else ("", {})

    reports = ReportWait()

    def render() -> tuple[RenderableType, bool]:
        """The view, and whether there is nothing left to wait for (reports included)."""
        nonlocal first
        if sweep_id is not None:
            item = first or (client.sweep if target == "sweep" else client.experiment)(sweep_id)
            first = {}
            if target == "experiment":
                return experiment_view(item), item["status"] in FINISHED
            view: RenderableType = sweep_status(item)
            if ids:
                listed = experiments_table(client.experiments(sweep_id), title="experiments")
                view = Group(view, listed)
            else:
                hint = f"experiment ids and MLflow runs: regbench status {sweep_id} --ids"
                view = Group(view, Text(hint, "dim"))
            return view, reports.settled([item])
        sweeps, queue = client.sweeps(limit=limit), client.queue()
        idle = not any(queue.get("by_state", {}).get(s) for s in ("queued", "running"))
        return overview(sweeps, queue), idle and reports.settled(sweeps.get("data", []))

    console = stdout_console()
    view, done = render()
    if not watch:
        console.print(view)
        return
    # Off a terminal Live draws only the last view, which is what a log wants.
    with Live(view, console=console, auto_refresh=False) as live:
        try:
            while not done:
                time.sleep(interval)
                view, done = render()
                live.update(view, refresh=True)
        except KeyboardInterrupt:
            pass  # stopping the watch leaves the work running: nothing to report


class ReportWait:
    """When ``status --watch`` may stop: every sweep finished and its report done or
    failed. A finished sweep's report still "none" after ``REPORT_START_GRACE_S`` is
    not waited for (no worker or reconciler is there to build it)."""

    def __init__(self) -> None:
        self.finished_since: float | None = None

    def settled(self, sweeps: list[dict[str, Any]]) -> bool:
        if not all(sweep["status"] in FINISHED for sweep in sweeps):
            self.finished_since = None
            return False
        reports = [(sweep.get("report") or {}).get("status", "none") for sweep in sweeps]
        if "building" in reports:
            return False
        if "none" not in reports:
            return True
        now = time.monotonic()
        self.finished_since = now if self.finished_since is None else self.finished_since
        return now - self.finished_since >= REPORT_START_GRACE_S


# --------------------------------------------------------------------------- results


@main.command()
@click.argument("sweep_id", metavar="SWEEP")
@click.option("--csv", "as_csv", is_flag=True, help="The server's CSV, verbatim.")
@click.option("--markdown", "as_markdown", is_flag=True, help="A GitHub markdown table.")
@click.option(
    "--metrics",
    "patterns",
    multiple=True,
    metavar="PATTERN",
    help="Only these metrics: a glob (attack/*) or a part of the name (pgd); repeatable.",
)
@click.option(
    "--baseline",
    metavar="CONFIGURATION",
    help="The row the others are compared with: a configuration, or a row's index from 0 "
    "(default: the first).",
)
@click.option("--ids", is_flag=True, help="List each experiment's id and MLflow run too.")
@remote_command
def results(
    client: RegbenchClient,
    sweep_id: str,
    as_csv: bool,
    as_markdown: bool,
    patterns: tuple[str, ...],
    baseline: str | None,
    ids: bool,
) -> None:
    """A sweep's results, mean ± std over seeds, and each row against a baseline.

    One row per configuration; n is the experiments that succeeded (of all, when fewer).
    Then, per metric, each configuration's difference from the baseline row with its 95%
    confidence interval and Holm-corrected p-value: * significant (p < 0.05), n.s. not.
    """
    if as_csv and as_markdown:
        raise click.UsageError("--csv and --markdown: choose one")
    if as_csv and patterns:
        raise click.UsageError("--metrics does not apply to --csv (printed as the server sends it)")
    if as_csv:
        click.echo(client.results_csv(sweep_id, baseline), nl=False)
        return
    answer = client.results(sweep_id, baseline)
    if patterns and not select_metrics(answer.get("metrics", []), patterns):
        available = ", ".join(answer.get("metrics", [])) or "none yet"
        fail(f"no metric matches {' '.join(patterns)}; the sweep has: {available}", EXIT_INVALID)
    if as_markdown:
        versus = baseline_markdown(answer, patterns)
        click.echo(results_markdown(answer, patterns) + (f"\n{versus}" if versus else ""), nl=False)
        return
    print_results(answer, patterns)
    if ids:
        order = [row["configuration"] for row in answer.get("rows", [])]
        title = "experiments (for regbench status, artifacts, retry; MLflow runs)"
        stdout_console().print(experiments_table(client.experiments(sweep_id), order, title))
    if not answer.get("rows"):
        click.echo(f"no results yet; see `regbench status {sweep_id}`", err=True)
    elif not ids:
        click.echo(f"experiment ids and MLflow runs: regbench results {sweep_id} --ids", err=True)


# --------------------------------------------------------------------------- files

output_option = click.option(
    "-o",
    "--output",
    "dest_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to download into.",
)


@main.command()
@click.argument("experiment_id", metavar="EXPERIMENT")
@click.argument("path", required=False)
@output_option
@remote_command
def artifacts(client: RegbenchClient, experiment_id: str, path: str | None, dest_dir: Path) -> None:
    """List or download an experiment's files.

    Without PATH: every file with its size. With PATH: that file, or every file under
    that directory (the directory itself is created in DIR, as `cp -r` would).
    """
    listing = client.artifacts(experiment_id)
    if path is None:
        if not listing:
            click.echo(f"experiment {experiment_id} has no artifacts yet", err=True)
            return
        table = Table(box=None, show_header=True, pad_edge=False)
        table.add_column("path")
        table.add_column("size", justify="right")
        for entry in listing:
            name = entry["path"] + ("/" if entry["is_dir"] else "")
            table.add_row(Text(name), Text(format_size(entry.get("size"))))
        stdout_console().print(table)
        return
    wanted = path.strip("/")
    entry = next((item for item in listing if item["path"] == wanted), None)
    if entry is None or not entry["is_dir"]:
        # Unknown paths go to the server too: its 404 says what is wrong.
        click.echo(client.download(experiment_id, wanted, dest_dir))
        return
    files = [f["path"] for f in listing if not f["is_dir"] and f["path"].startswith(wanted + "/")]
    if not files:
        click.echo(f"{wanted}/ holds no files", err=True)
    # Like `cp -r`: the directory itself lands in dest_dir, with its subdirectories.
    parent = PurePosixPath(wanted).parent
    for file in files:
        relative = PurePosixPath(file).relative_to(parent)
        target_dir = path_inside(dest_dir, str(relative.parent))
        click.echo(client.download(experiment_id, file, target_dir))


@main.command()
@click.argument("sweep_id", metavar="SWEEP")
@output_option
@remote_command
def report(client: RegbenchClient, sweep_id: str, dest_dir: Path) -> None:
    """Download a sweep's report files.

    report.png, report.html, results.csv, ...; the server builds the report when the sweep
    finishes.
    """
    files = [item["path"] for item in client.report_files(sweep_id) if not item["is_dir"]]
    if not files:
        click.echo(f"the report of sweep {sweep_id} has no files", err=True)
    for file in files:
        click.echo(client.download_report_file(sweep_id, file, dest_dir))


# --------------------------------------------------------------------------- cancel


@main.command()
@click.argument("target_id", metavar="ID")
@remote_command
def cancel(client: RegbenchClient, target_id: str) -> None:
    """Cancel a sweep or an experiment.

    Queued jobs are cancelled now, running ones stop at their next heartbeat.
    """
    answer = client.cancel(target_id)
    count = len(answer.get("cancelled_jobs", []))
    jobs = "job" if count == 1 else "jobs"
    note = "" if count else " (nothing was queued or running)"
    click.echo(f"{answer['target']} {target_id}: {count} {jobs} cancelled{note}")
    if kept := answer.get("kept_experiments"):
        click.echo(
            f"{len(kept)} experiment(s) shared with another user's work left alone "
            "(only their owner or an admin cancels them)"
        )


# --------------------------------------------------------------------------- retry


@main.command()
@click.argument("target_id", metavar="ID")
@remote_command
def retry(client: RegbenchClient, target_id: str) -> None:
    """Run a sweep's (or an experiment's) failed and cancelled experiments again.

    Their failed and cancelled jobs go back in the queue (a train job resumes from its
    last checkpoint, in its MLflow run); succeeded ones are kept. Submitting the grid
    again never does this, and --force would rerun every experiment.
    """
    answer = client.retry(target_id)
    count = len(answer.get("retried_jobs", []))
    if count:
        jobs = "job" if count == 1 else "jobs"
        click.echo(f"{answer['target']} {target_id}: {count} failed or cancelled {jobs} queued")
    else:
        click.echo(
            f"{answer['target']} {target_id}: nothing to retry (no job failed or was cancelled)"
        )
    if kept := answer.get("kept_experiments"):
        click.echo(
            f"{len(kept)} experiment(s) shared with another user's work left alone "
            "(only their owner or an admin retries them)"
        )
    if count:
        click.echo(f"follow it with: regbench status {target_id} --watch", err=True)


if __name__ == "__main__":
    main()
