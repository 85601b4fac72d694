"""``regbench serve``: the whole embedded stack on one machine, one command.

Refuses a port something already listens on, upgrades the job store, then starts the
API (uvicorn), one worker with the reconciler (``regbench worker``) and the MLflow UI as
child processes, waits until the API is healthy (its /healthz echoes the instance id
serve gave it, so another server's answer is never taken for it), prints the addresses
and runs until interrupted; then it stops them all.
Everything lives under the data directory: SQLite job store, SQLite broker, local
MLflow store. Point REGBENCH_* at PostgreSQL/Redis/a tracking server for the same
stack on cluster services.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx

from service.redact import install_log_redaction
from service.settings import Settings


@dataclass
class Stack:
    """Child processes of ``regbench serve``, each in its own process group."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, command: list[str]) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def exited(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.poll() is not None]

    def stop(self, grace_s: float = 15.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def stack_commands(
    settings: Settings, host: str, port: int, mlflow_port: int | None
) -> dict[str, list[str]]:
    python = sys.executable
    commands = {
        "api": [python, "-m", "uvicorn", "api.app:create_app", "--factory",
                "--host", host, "--port", str(port)],
        "worker": [python, "-m", "client.cli", "worker", "--reconcile"],
    }  # fmt: skip
    if mlflow_port is not None:
        commands["mlflow"] = [
            python, "-m", "mlflow", "server", "--workers", "1",
            # the store's URI (maybe with a password) goes in MLFLOW_BACKEND_STORE_URI:
            # a command line is visible to every user of the machine
            "--default-artifact-root", settings.artifact_root.as_uri(),
            "--host", host, "--port", str(mlflow_port),
        ]  # fmt: skip
    return commands


def prepare_tracking_store(settings: Settings) -> None:
    """Create (migrate) a local MLflow store before any child opens it: the MLflow server,
    the API's health check and the worker would otherwise migrate one new SQLite file at
    once, and all but one fail ("expected to match one row ... in 'alembic_version'")."""
    if settings.tracking_uri.startswith("sqlite:"):
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its migrations talk at INFO
        MlflowClient(tracking_uri=settings.tracking_uri).search_experiments(max_results=1)


def auth_line(settings: Settings) -> str:
    """Who may do what on this stack (no users: one local user, no tokens)."""
    from service.db import Database
    from service.users import auth_mode

    database = Database(settings.job_store_url)
    try:
        with database.session() as session:
            return auth_mode(settings, session)
    finally:
        database.dispose()


def check_port_free(host: str, port: int, option: str) -> None:
    """ClickException naming the port when something listens there already: the API (or
    the MLflow UI) would fail to bind while the other server answered in its place."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as uvicorn binds: a port left in TIME_WAIT by a stopped stack is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(
                f"port {port} on {host} is already in use ({exc.strerror}): another server "
                f"(maybe another regbench serve) listens there; stop it or pick a free port "
                f"with {option}"
            ) from None


def wait_healthy(url: str, stack: Stack, timeout_s: float, instance: str | None = None) -> None:
    """Until ``url`` answers 200 with our ``instance`` id (the API echoes
    REGBENCH_INSTANCE_ID): another server answering there fails at once."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if dead := stack.exited():
            raise click.ClickException(
                f"{', '.join(dead)} exited during start-up; see {stack.log_dir}/<name>.log"
            )
        try:
            answer = httpx.get(url, timeout=2)
        except httpx.HTTPError:
            answer = None
        if answer is not None and answer.status_code in (200, 503):
            if instance is not None and _instance(answer) != instance:
                port = httpx.URL(url).port
                raise click.ClickException(
                    f"port {port} answers, but not as this regbench serve's API ({url} gave "
                    f"{answer.status_code} without our instance id): another server holds "
                    "the port; stop it or pick a free port with --port"
                )
            if answer.status_code == 200:
                return
        time.sleep(0.5)
    raise click.ClickException(f"{url} not healthy after {timeout_s:.0f} s; see {stack.log_dir}")


def _instance(answer: httpx.Response) -> str | None:
    try:
        body = answer.json()
    except ValueError:
        return None
    return body.get("instance") if isinstance(body, dict) else None


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="API port.")
@click.option("--mlflow-port", default=5000, show_default=True, help="MLflow UI port.")
@click.option("--no-mlflow-ui", is_flag=True, help="Do not start the MLflow UI.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Override REGBENCH_DATA_DIR.")
def serve(
    host: str, port: int, mlflow_port: int, no_mlflow_ui: bool, data_dir: Path | None
) -> None:
    """Run the API, a worker, the reconciler and the MLflow UI until interrupted."""
    from service.schema import upgrade_database

    check_port_free(host, port, "--port")
    if not no_mlflow_ui:
        check_port_free(host, mlflow_port, "--mlflow-port (or --no-mlflow-ui)")
    settings = Settings(data_dir=data_dir) if data_dir is not None else Settings()
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    ui = None if no_mlflow_ui else f"http://{host}:{mlflow_port}"
    # /healthz echoes it: the answer on the port is this stack's API, not another server
    instance = os.environ.get("REGBENCH_INSTANCE_ID") or secrets.token_hex(8)
    env = {**os.environ, "REGBENCH_DATA_DIR": str(data), "REGBENCH_INSTANCE_ID": instance}
    install_log_redaction(settings.secrets)
    if ui is not None and not settings.mlflow_ui_url:
        env["REGBENCH_MLFLOW_UI_URL"] = ui
    settings = Settings(data_dir=data)
    env["MLFLOW_BACKEND_STORE_URI"] = settings.tracking_uri
    upgrade_database(settings.job_store_url)
    prepare_tracking_store(settings)

    log_dir = data / "logs"
    log_dir.mkdir(exist_ok=True)
    stack = Stack(env, log_dir)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    api = f"http://{host}:{port}"
    try:
        for name, command in stack_commands(
            settings, host, port, None if no_mlflow_ui else mlflow_port
        ).items():
            stack.start(name, command)
        wait_healthy(f"{api}/healthz", stack, timeout_s=120, instance=instance)
        click.echo(f"regbench API   {api}  (docs: {api}/docs)", err=True)
        if ui is not None:
            click.echo(f"MLflow UI      {ui}", err=True)
        click.echo(f"data and logs  {data}", err=True)
        click.echo(auth_line(settings), err=True)
        click.echo("ready; Ctrl-C stops everything", err=True)
        while not stopping:
            if dead := stack.exited():
                raise click.ClickException(f"{', '.join(dead)} stopped; see {log_dir}")
            time.sleep(0.5)
    finally:
        stack.stop()
