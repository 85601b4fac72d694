"""The ``regbench`` command.

Commands that talk to a regbench server use HTTP only. Commands that run work on this
machine (``run``, ``catalog``) live in ``service.cli`` and are imported only when
called, so the client itself never loads torch or MLflow.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console

LOCAL_COMMANDS = {
    "run": ("service.cli", "run", "Run a spec or a grid here, in-process, and print results."),
    "analyze": ("service.cli", "analyze", "Run analyses on a finished run's checkpoint."),
    "catalog": ("service.cli", "catalog", "List datasets, models and regularizers with params."),
    "db": ("service.cli", "db", "Job-store schema: upgrade, downgrade, current."),
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


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--server", envvar="REGBENCH_SERVER", default="http://127.0.0.1:8000", show_default=True
)
@click.option("--token", envvar="REGBENCH_TOKEN", help="API token (or REGBENCH_TOKEN).")
@click.option("--force", is_flag=True, help="New experiments even for specs already submitted.")
@click.option("--wait/--no-wait", default=False, help="Watch progress, then print results.")
def submit(path: Path, server: str, token: str | None, force: bool, wait: bool) -> None:
    """Submit a spec or a grid file to a regbench server (HTTP only)."""
    from client.remote import RegbenchClient, ServerError

    err = Console(stderr=True)
    client = RegbenchClient(server, token)
    try:
        submitted = client.submit(yaml.safe_load(path.read_text()), force=force)
    except ServerError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        sys.exit(1)
    new = sum(item.created for item in submitted)
    err.print(f"submitted {len(submitted)} experiments ({new} new) to {server}", highlight=False)
    if not wait:
        for item in submitted:
            click.echo(f"{item.id}  {item.configuration}")
        return
    try:
        states = watch(client, [item.id for item in submitted], err)
    except ServerError as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        sys.exit(1)
    rows = [
        (item.configuration, states[item.id].get("metrics") or {})
        for item in submitted
        if states[item.id]["status"] == "succeeded"
    ]
    failed = [item for item in submitted if states[item.id]["status"] != "succeeded"]
    for item in failed:
        state = states[item.id]
        errors = "; ".join(job["error"] for job in state["jobs"] if job.get("error"))
        err.print(f"[red]{item.configuration}: {state['status']}[/red] {errors}", highlight=False)
    from client.tables import comparison_table

    Console(width=None if sys.stdout.isatty() else 250).print(comparison_table(rows))
    sys.exit(1 if failed else 0)


def watch(client: Any, ids: list[str], console: Console) -> dict[str, dict[str, Any]]:
    """Progress bars until every experiment finished."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("experiments finished", total=len(ids))

        def update(states: dict[str, dict[str, Any]]) -> None:
            done = sum(
                state["status"] in ("succeeded", "failed", "cancelled") for state in states.values()
            )
            progress.update(task, completed=done)

        return client.wait(ids, on_update=update)


if __name__ == "__main__":
    main()
