"""``regbench worker`` and ``regbench reconcile``: the worker side of a deployment.

Registered in ``client.cli.LOCAL_COMMANDS``; the worker package is imported only when a
command runs, so listing the commands stays fast.
"""

from __future__ import annotations

import logging
import sys

import click

EXIT_INVALID = 2


def _check_schema() -> None:
    from service.db import make_engine
    from service.schema import SchemaOutdatedError, assert_schema_current
    from service.settings import Settings

    engine = make_engine(Settings().job_store_url)
    try:
        assert_schema_current(engine)
    except SchemaOutdatedError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()


@click.command()
@click.option(
    "--gpus",
    help="Comma-separated GPU indices, one Celery worker each on queue gpu "
    "(default: every GPU torch sees; with none, one CPU worker on queue cpu).",
)
@click.option("--cpu", "cpu_only", is_flag=True, help="One CPU worker even on a GPU machine.")
@click.option("-Q", "--queues", help="Queues to serve (default: gpu with GPUs, else cpu).")
@click.option(
    "--slots",
    "-c",
    "--concurrency",
    "slots",
    type=click.IntRange(min=1, max=64),
    default=None,
    help="Jobs at once per worker (per GPU with --gpus), each in its own warm job process; "
    "a job shares a GPU only as far as its resources.gpu_fraction allows "
    "[REGBENCH_SLOTS, else 1].",
)
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option(
    "--reconcile/--no-reconcile",
    default=None,
    help="Also run the reconciler here (default: only with the embedded broker).",
)
@click.option("--dry-run", is_flag=True, help="Print the worker command lines and exit.")
def worker(
    gpus: str | None,
    cpu_only: bool,
    queues: str | None,
    slots: int | None,
    loglevel: str,
    reconcile: bool | None,
    dry_run: bool,
) -> None:
    """Start Celery workers for this machine: one per GPU, or one on the cpu queue."""
    from service.settings import Settings
    from worker import launcher

    if gpus is not None and cpu_only:
        raise click.UsageError("--gpus and --cpu exclude each other")
    try:
        chosen = [] if cpu_only else launcher.parse_gpus(gpus) if gpus else launcher.detect_gpus()
        if gpus and not dry_run:
            launcher.check_gpus(chosen)  # asked for GPUs: never fall back to the CPU quietly
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--gpus") from None
    settings = Settings()
    embedded = settings.celery_broker_url.startswith("sqla+")
    workers = launcher.plan_workers(
        chosen,
        queues=queues,
        slots=slots or settings.slots,
        loglevel=loglevel,
        events=not embedded,
        torch_threads=settings.torch_threads,
    )
    helpers = (
        [launcher.reconciler_process()] if (embedded if reconcile is None else reconcile) else []
    )
    if dry_run:
        for spec in [*workers, *helpers]:
            env = " ".join(f"{key}={value}" for key, value in spec.env.items())
            click.echo(f"{env} {' '.join(spec.argv)}".strip())
        return
    _check_schema()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(launcher.run_processes(workers, helpers))


@click.command()
@click.option("--once", is_flag=True, help="One round, then exit.")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=None, help="Seconds between rounds [30]."
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=None,
    help="Re-send a queued job unclaimed this many seconds after its last enqueue [300].",
)
def reconcile(once: bool, interval: float | None, grace: float | None) -> None:
    """Requeue jobs whose worker died and re-send queued jobs the broker lost."""
    from worker import reconciler

    _check_schema()
    argv = ["--once"] if once else []
    if interval is not None:
        argv += ["--interval", str(interval)]
    if grace is not None:
        argv += ["--grace", str(grace)]
    sys.exit(reconciler.main(argv))
