"""`regbench serve` never mistakes another server on its port for its own API."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import pytest

from service.serve import Stack, check_port_free, wait_healthy


class _Healthy(BaseHTTPRequestHandler):
    """A foreign server that answers 200 to everything, /healthz included."""

    def do_GET(self) -> None:
        body = b'{"status": "ok", "components": {}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def foreign_server() -> Iterator[int]:
    """A real HTTP server on a free port of 127.0.0.1; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_serve_refuses_a_port_another_server_holds(foreign_server: int, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGBENCH_")}
    done = subprocess.run(
        [sys.executable, "-m", "client.cli", "serve", "--no-mlflow-ui",
         "--data-dir", str(tmp_path / "data"), "--port", str(foreign_server)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "ready; Ctrl-C" not in output
    assert f"port {foreign_server} on 127.0.0.1 is already in use" in output
    assert "--port" in output  # what to do about it


def test_a_port_in_use_is_named(foreign_server: int) -> None:
    with pytest.raises(click.ClickException, match=f"port {foreign_server} on 127.0.0.1"):
        check_port_free("127.0.0.1", foreign_server, "--port")


def test_a_free_port_passes(foreign_server: int) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free("127.0.0.1", port, "--port")  # raises nothing


def test_a_healthy_answer_that_is_not_our_own_fails_at_once(
    foreign_server: int, tmp_path: Path
) -> None:
    """Another server taking the port after the check (a race): its 200 is not ours."""
    stack = Stack({}, tmp_path)
    url = f"http://127.0.0.1:{foreign_server}/healthz"
    with pytest.raises(click.ClickException) as raised:
        wait_healthy(url, stack, timeout_s=30, instance="abc123")
    assert f"port {foreign_server}" in raised.value.message
    assert "not as this regbench serve" in raised.value.message


def test_the_demo_launcher_never_takes_another_server_for_its_stack(foreign_server: int) -> None:
    """`make demo` waits for the API its `regbench serve` started, by the instance id."""
    from client.demo import wait_until_up
    from client.remote import ServerError

    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        url = f"http://127.0.0.1:{foreign_server}/healthz"
        with pytest.raises(ServerError, match="not ready"):
            wait_until_up(url, stand_in, instance="abc123", timeout_s=2)
    finally:
        stand_in.kill()
        stand_in.wait()
