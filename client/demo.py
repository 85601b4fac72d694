"""`make demo`: start the embedded stack, submit the demo grid over HTTP as one sweep, watch
its progress, print its results table, stop the stack.

    python -m client.demo examples/demo-grid.yaml [--data-dir regbench-data/demo]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from rich.console import Console
from rich.text import Text

from client.cli import print_results, report_unsuccessful, watch_sweep
from client.remote import RegbenchClient, ServerError

PORT, MLFLOW_PORT = 8765, 5765


def wait_until_up(
    url: str, serve: subprocess.Popen[bytes], instance: str, timeout_s: float = 180
) -> None:
    """Until the API that ``serve`` started answers: its /healthz echoes ``instance``, so
    another server on the port is never taken for it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise ServerError("regbench serve exited during start-up (its message is above)")
        try:
            answer = httpx.get(url, timeout=2)
            if answer.status_code == 200 and answer.json().get("instance") == instance:
                return
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        time.sleep(0.5)
    raise ServerError(f"regbench serve not ready after {timeout_s:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path("regbench-data/demo"))
    args = parser.parse_args()
    console = Console(stderr=True)
    server = f"http://127.0.0.1:{PORT}"
    instance = secrets.token_hex(8)  # serve refuses a taken port; this tells us it is ours
    serve = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve", "--data-dir", str(args.data_dir),
         "--port", str(PORT), "--mlflow-port", str(MLFLOW_PORT)],
        env={**os.environ, "REGBENCH_INSTANCE_ID": instance},
        start_new_session=True,
    )  # fmt: skip
    try:
        console.print("starting the embedded stack (API, worker, reconciler, MLflow UI)...")
        wait_until_up(f"{server}/healthz", serve, instance)
        # No token needed on a data dir without users; REGBENCH_TOKEN if it has some.
        with RegbenchClient(server, os.environ.get("REGBENCH_TOKEN")) as client:
            me = client.whoami()
            how = "an admin" if me["admin"] else "a user"
            console.print(f"submitting as {me['name']!r} ({how})")
            submitted = client.submit_sweep(yaml.safe_load(args.grid.read_text()))
            sweep_id = submitted["id"]
            console.print(
                f"sweep {sweep_id}: {submitted['size']} experiments "
                f"({submitted['new_experiments']} new), submitted over HTTP to {server}"
            )
            sweep = watch_sweep(client, sweep_id, console, poll_s=1.0)
            results = client.results(sweep_id)
    except ServerError as exc:
        console.print(Text(str(exc), style="red"))
        return 1
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)
    print_results(results)  # as `regbench results`: fitted to the terminal, nothing cut
    if unsuccessful := report_unsuccessful(sweep):
        console.print(Text(unsuccessful, style="red"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
