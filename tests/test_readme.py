"""The README against the code it describes: facts that drifted once (issue 14, point 10)
are read from the code here, so they cannot drift again unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from click.testing import CliRunner

from client.notebook import Regbench
from regcore.registries import ANALYSES, REGULARIZERS
from service.worker_commands import worker

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CLUSTER_GUIDE = (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")


def paragraph_after(marker: str, text: str = README) -> str:
    """The text from ``marker`` to the next blank line, lines joined by spaces."""
    start = text.index(marker)
    end = text.find("\n\n", start)
    return " ".join(text[start : end if end >= 0 else None].split())


def test_the_unknown_regularizer_example_lists_every_registered_regularizer() -> None:
    example = paragraph_after("regularizers.0.name: unknown regularizer 'l3'")
    listed = example.split("valid choices:")[1].split("$ regbench")[0]
    names = [name.strip() for name in listed.split(",")]
    assert names == REGULARIZERS.names()


def test_the_spec_table_describes_every_registered_analysis() -> None:
    kind, described = "", []
    for line in README.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3:
            continue
        kind = cells[0] or kind
        if kind == "analyses":
            described += re.findall(r"`([a-z_]+)`", cells[1])
    # Loops over the registry: an analysis added later must be described here too.
    missing = [name for name in ANALYSES.names() if name not in described]
    assert not missing, f"the README's spec table does not describe: {missing}"


def test_the_health_check_claim_matches_docker_compose() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    with_check = {name for name, service in services.items() if service.get("healthcheck")}
    claim = paragraph_after("Compose health checks")
    named = claim.split(";")[0]
    assert set(re.findall(r"`([a-z-]+)`", named)) == with_check
    assert "each with a health check" not in README
    for name in set(services) - with_check:  # the others are accounted for
        assert name in claim or name.startswith(("worker-", "reconciler")), name
    assert "the workers and the reconciler" in claim


def test_flower_is_said_to_need_the_redis_broker() -> None:
    """Workers on the embedded SQLite broker send no task events (Flower shows nothing);
    on Redis they do. The README says so."""
    runner = CliRunner()
    embedded = runner.invoke(
        worker, ["--cpu", "--dry-run"], env={"REGBENCH_BROKER_URL": "sqla+sqlite:///b.db"}
    )
    assert embedded.exit_code == 0, embedded.output
    redis = runner.invoke(
        worker, ["--cpu", "--dry-run"], env={"REGBENCH_BROKER_URL": "redis://h:6379/0"}
    )
    assert redis.exit_code == 0, redis.output
    assert "--task-events" not in embedded.output and "--task-events" in redis.output
    flower = paragraph_after("The deployment runs Flower")
    assert "Flower needs the Redis broker" in flower and "shows nothing" in flower


def test_the_notebook_client_is_documented_with_methods_that_exist() -> None:
    start = README.index("from client.notebook import Regbench")
    example = README[start : README.index("```", start)]
    called = set(re.findall(r"\brb\.([a-z_]+)\(", example))
    assert {"submit", "wait", "results_frame", "experiments_frame", "download_artifacts"} <= called
    for name in called:
        assert callable(getattr(Regbench, name, None)), f"README calls rb.{name}, which is absent"


def test_the_slurm_recipe_is_linked_and_its_guide_exists() -> None:
    assert "deploy/slurm/regbench-worker.sbatch" in README
    assert (ROOT / "deploy" / "slurm" / "regbench-worker.sbatch").is_file()
    assert "docs/cluster.md#slurm-clusters-without-docker" in README
    assert "\n## Slurm: clusters without Docker\n" in CLUSTER_GUIDE
