"""MLflow unreachable for longer than its client retries, mid-training: the job keeps
training, its metrics and artifacts wait on local disk, and they reach the run when the
server is back; the run ends with every epoch once.

The server runs once for the module behind a TCP proxy that the test cuts: connections
are refused and open ones dropped, as when the server or its network goes away (a
restarted MLflow server takes most of a minute to start on a busy machine)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import (
    Outcome,
    PostgresServer,
    RedisServer,
    assert_one_run_every_epoch_once,
    free_port,
)
from tests.worker.conftest import SLOW_SPEC, Backend, _make_backend, spec_with

pytestmark = pytest.mark.slow

OUTAGE_S = 15.0  # the client gives up after ~3 s here (MLFLOW_HTTP_REQUEST_* below)
EPOCHS = 6


class TcpProxy:
    """Forwards 127.0.0.1:port to a target port until cut; restored on the same port."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self.listener: socket.socket | None = None
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self.lock:
            for connection in self.open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self.open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``mlflow server`` (SQLite store, artifacts served by the server); its port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            health = f"http://127.0.0.1:{port}/health"
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        log.close()


@pytest.fixture
def proxy(mlflow_server: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(mlflow_server)
    proxy.restore()
    yield proxy
    proxy.cut()


@pytest.fixture
def tracked_cluster(
    tmp_path: Path, proxy: TcpProxy, own_postgres: PostgresServer, own_redis: RedisServer
) -> Iterator[Backend]:
    """The cluster configuration with an MLflow tracking server (behind the proxy)."""
    uri = f"http://127.0.0.1:{proxy.port}"
    yield from _make_backend(
        "cluster", tmp_path, uri, own_postgres.create_database(), own_redis.url
    )


def epoch_of(message: str | None) -> int:
    found = re.search(r"epoch (\d+)/", message or "")
    return int(found.group(1)) if found and not (message or "").startswith("training") else 0


def test_mlflow_unreachable_longer_than_its_retries_delays_but_loses_nothing(
    tracked_cluster: Backend, proxy: TcpProxy, reliability: Outcome
) -> None:
    cluster = tracked_cluster
    # MLflow's client gives up after ~3 s (its default: ~4 minutes): the outage is longer.
    cluster.processes.env.update(
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="2", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1"
    )
    experiment_id = cluster.submit(spec_with(SLOW_SPEC, training={"epochs": EPOCHS}))
    cluster.start_worker()
    cluster.wait(lambda: epoch_of(cluster.train(experiment_id).message) >= 1, 120, "epoch 1")
    proxy.cut()
    cut_at = time.monotonic()
    cut_epoch = epoch_of(cluster.train(experiment_id).message)

    def trained_on() -> bool:
        train = cluster.train(experiment_id)
        moved = epoch_of(train.message) >= min(cut_epoch + 2, EPOCHS) or "trained" in (
            train.message or ""
        )
        return moved or train.state != "running"

    cluster.wait(trained_on, 120, "training to go on while MLflow is unreachable")
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))
    during = cluster.train(experiment_id)
    proxy.restore()
    restored = time.monotonic()
    train = cluster.wait_finished(experiment_id, timeout=120)["train"]
    recovered = time.monotonic() - restored

    assert during.state == "running", f"{during}\n{cluster.processes.logs()}"
    assert (train.state, train.attempt) == ("succeeded", 1), f"{train}\n{cluster.processes.logs()}"
    assert cluster.experiment(experiment_id)["metrics"]["epochs"] == EPOCHS
    assert_one_run_every_epoch_once(cluster, [experiment_id])
    artifacts = {
        a.path for a in cluster.mlflow().list_artifacts(train.mlflow_run_id, "checkpoints")
    }
    assert "checkpoints/model.pt" in artifacts, artifacts
    spool = cluster.settings.spool_dir
    assert not spool.exists() or not any(spool.iterdir()), "undelivered spool left behind"
    reliability.record(
        f"MLflow unreachable for {OUTAGE_S:.0f} s mid-training (client retries end after ~3 s)",
        f"training went on (epoch {cut_epoch} -> {epoch_of(during.message) or EPOCHS}); "
        "metrics and artifacts spooled on disk and delivered when it returned; "
        "every epoch once in its run",
        recovered,
    )
