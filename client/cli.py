"""The ``regbench`` command.

Commands that talk to a regbench server use HTTP only. Commands that run work on this
machine (``run``, ``catalog``) live in ``service.cli`` and are imported only when
called, so the client itself never loads torch or MLflow.
"""

from __future__ import annotations

import importlib

import click

LOCAL_COMMANDS = {
    "run": ("service.cli", "run", "Run a spec or a grid here, in-process, and print results."),
    "analyze": ("service.cli", "analyze", "Run analyses on a finished run's checkpoint."),
    "catalog": ("service.cli", "catalog", "List datasets, models and regularizers with params."),
    "db": ("service.cli", "db", "Job-store schema: upgrade, downgrade, current."),
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


if __name__ == "__main__":
    main()
