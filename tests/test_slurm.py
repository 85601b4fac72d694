"""deploy/slurm/regbench-worker.sbatch, run by bash with stand-ins for ``srun`` and
``regbench`` on PATH (each records its argv and environment) and the variables Slurm
sets: one ``regbench worker`` per node with the node's GPUs, the cluster's settings,
the cores shared, datasets staged, and SIGTERM passed on for a warm shutdown."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "slurm" / "regbench-worker.sbatch"
CLUSTER = {
    "REGBENCH_DATABASE_URL": "postgresql+psycopg://regbench@db.cluster/regbench",
    "REGBENCH_BROKER_URL": "redis://redis.cluster:6379/0",
    "REGBENCH_MLFLOW_TRACKING_URI": "http://mlflow.cluster:5000",
}

# srun as it behaves for one node: its options dropped, the command run in its place.
FAKE_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$RECORD_DIR/srun.argv"
while [[ "$1" == -* ]]; do shift; done
exec "$@"
"""
# regbench: argv, the environment it got, its directory; with FAKE_WAIT it runs until
# SIGTERM, as a worker does, and records the signal.
FAKE_REGBENCH = """#!/usr/bin/env bash
python3 - "$@" <<'PY'
import json, os, sys
record = {"argv": sys.argv[1:], "cwd": os.getcwd(),
          "env": {k: v for k, v in os.environ.items()
                  if k.startswith(("REGBENCH_", "CUDA_", "SLURM_"))}}
with open(os.path.join(os.environ["RECORD_DIR"], "regbench.json"), "w") as f:
    json.dump(record, f)
PY
if [[ -n "${FAKE_WAIT:-}" ]]; then
    trap 'echo TERM > "$RECORD_DIR/signal"; exit 0' TERM
    touch "$RECORD_DIR/waiting"
    while true; do sleep 0.05; done
fi
"""


def stub(directory: Path, name: str, text: str) -> None:
    path = directory / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def slurm(tmp_path: Path) -> dict[str, str]:
    """The environment of a batch job, with the stand-ins first on PATH."""
    bin_dir, records = tmp_path / "bin", tmp_path / "records"
    bin_dir.mkdir()
    records.mkdir()
    stub(bin_dir, "srun", FAKE_SRUN)
    stub(bin_dir, "regbench", FAKE_REGBENCH)
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("REGBENCH_", "SLURM_"))}
    keep.pop("CUDA_VISIBLE_DEVICES", None)
    return {
        **keep,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD_DIR": str(records),
        "SLURM_JOB_ID": "4242",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_CPUS_ON_NODE": "32",
        **CLUSTER,
    }


def run(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], dict]:
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )
    record_file = Path(env["RECORD_DIR"]) / "regbench.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    return done, record


def test_the_script_is_valid_bash() -> None:
    checked = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert os.access(SCRIPT, os.X_OK)


def test_one_worker_per_allocated_gpu_with_the_cluster_settings(slurm: dict[str, str]) -> None:
    done, record = run({**slurm, "CUDA_VISIBLE_DEVICES": "2,3", "SLURM_GPUS_ON_NODE": "2"})
    assert done.returncode == 0, done.stderr
    srun = (Path(slurm["RECORD_DIR"]) / "srun.argv").read_text().splitlines()
    assert "--ntasks-per-node=1" in srun  # one launcher per node
    # `regbench worker --gpus 2,3` starts one Celery worker per GPU (worker/launcher.py).
    assert record["argv"] == ["worker", "--gpus", "2,3", "--slots", "1", "--no-reconcile"]
    env = record["env"]
    for name, value in CLUSTER.items():
        assert env[name] == value
    assert env["REGBENCH_TORCH_THREADS"] == "16"  # 32 allocated cores over 2 workers
    assert record["cwd"] == slurm["SLURM_SUBMIT_DIR"]


def test_gpus_counted_by_slurm_and_slots_from_the_settings(slurm: dict[str, str]) -> None:
    done, record = run({**slurm, "SLURM_GPUS_ON_NODE": "4", "REGBENCH_SLOTS": "2"})
    assert done.returncode == 0, done.stderr
    assert record["argv"] == ["worker", "--gpus", "0,1,2,3", "--slots", "2", "--no-reconcile"]
    assert record["env"]["REGBENCH_TORCH_THREADS"] == "4"  # 32 / (4 GPUs x 2 slots)


def test_no_gpu_allocated_starts_one_cpu_worker(slurm: dict[str, str]) -> None:
    done, record = run(slurm)
    assert done.returncode == 0, done.stderr
    assert record["argv"] == ["worker", "--cpu", "--slots", "1", "--no-reconcile"]
    assert record["env"]["REGBENCH_TORCH_THREADS"] == "32"


def test_settings_come_from_the_env_file(slurm: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in slurm.items() if k not in CLUSTER}
    (tmp_path / "regbench.env").write_text(
        "".join(f"{name}={value}\n" for name, value in CLUSTER.items())
    )
    done, record = run({**env, "SLURM_GPUS_ON_NODE": "1"})
    assert done.returncode == 0, done.stderr
    assert {name: record["env"][name] for name in CLUSTER} == CLUSTER


def test_missing_or_embedded_stores_are_refused(slurm: dict[str, str]) -> None:
    env = {k: v for k, v in slurm.items() if k != "REGBENCH_BROKER_URL"}
    done, record = run(env)
    assert done.returncode == 2 and record == {}
    assert "set REGBENCH_BROKER_URL" in done.stderr
    done, record = run({**slurm, "REGBENCH_DATABASE_URL": "sqlite:///jobs.db"})
    assert done.returncode == 2 and record == {}
    assert "PostgreSQL" in done.stderr


def test_datasets_are_staged_to_node_local_scratch(slurm: dict[str, str], tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "MNIST" / "raw"
    shared.mkdir(parents=True)
    (shared / "train-images-idx3-ubyte").write_bytes(b"images")
    scratch = tmp_path / "scratch"
    env = {
        **slurm,
        "REGBENCH_STAGE_DATA": str(tmp_path / "shared"),
        "REGBENCH_SCRATCH": str(scratch),
    }
    done, record = run({**env, "SLURM_GPUS_ON_NODE": "1"})
    assert done.returncode == 0, done.stderr
    assert record["cwd"] == str(scratch)  # specs' dataset.root ./data is the local copy
    assert (
        scratch / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    ).read_bytes() == b"images"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_batch_shell_reaches_the_workers(
    slurm: dict[str, str], signum: signal.Signals
) -> None:
    """scancel --batch, or --signal=B:TERM@...: the batch shell passes SIGTERM on (a warm
    shutdown of every worker) and exits with the workers' status once they have ended."""
    records = Path(slurm["RECORD_DIR"])
    script = subprocess.Popen(
        ["bash", str(SCRIPT)],
        env={**slurm, "SLURM_GPUS_ON_NODE": "2", "FAKE_WAIT": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (records / "waiting").exists():
            assert script.poll() is None, script.communicate()
            assert time.monotonic() < deadline, "the worker stand-in never started"
            time.sleep(0.05)
        script.send_signal(signum)
        out, err = script.communicate(timeout=30)
    finally:
        if script.poll() is None:
            script.kill()
    assert script.returncode == 0, err
    assert (records / "signal").read_text().strip() == "TERM"
    assert "draining" in out
