"""``make bench``: run the benchmark sections, write ``bench/results.json`` and a Markdown
table (``bench/results.md``, also printed).

    python -m bench [--only step_cost,attacks] [--quick] [--device cpu,cuda]
                    [--out bench/results.json] [--merge] [--data-root ../shared/datasets]

Every section is a function ``run(ctx: BenchContext) -> SectionResult`` in a module of its
own, listed once in ``SECTIONS``; the runner imports a section's module only when the
section runs (the service sections pull in FastAPI, Celery and MLflow). A section that
cannot run here (no MNIST files, no Redis) is reported with the reason, as is one that
fails, and the others still run. ``--quick`` is a smoke run of the cheap sections with
tiny workloads (its figures are not meant to be read); the compute sections run once per
``--device`` (default: the CPU, and CUDA when present). ``--merge`` keeps the other
sections of an existing results file (a section re-measured alone, e.g. on a quieter
machine, replaces its old figures); every section records when and on which commit it ran.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.common import BenchContext, SectionResult, SectionUnavailable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results.json"
# Real MNIST (torchvision layout): $REGBENCH_DATA_ROOT, as the GPU tests read it.
DEFAULT_DATA_ROOT = Path(os.environ.get("REGBENCH_DATA_ROOT", ROOT.parent / "shared" / "datasets"))


@dataclass(frozen=True)
class Section:
    name: str  # what --only selects
    title: str  # the heading of its table
    target: str  # "module:function", imported when the section runs
    quick: bool  # part of a --quick run (cheap enough for the smoke test)


SECTIONS: list[Section] = [
    Section("step_cost", "Step cost relative to no regularization", "bench.step_cost:run", True),
    Section("throughput", "Samples per second per model", "bench.throughput:run", True),
    Section("attacks", "Adversarial examples per second", "bench.attacks:run", True),
    Section("boundary", "Decision-boundary plane points per second", "bench.boundary:run", True),
    Section("service", "The service: job overhead, sweeps, latency", "bench.service:run", False),
    Section("submission", "Sweep submission at scale", "bench.integrations:submission", False),
    Section("stacked", "Seeds trained together (stacked)", "bench.integrations:stacked", False),
]


def select(only: str | None, quick: bool) -> list[Section]:
    """The sections ``--only`` names (in SECTIONS order), else all (the cheap ones if quick)."""
    if only is None:
        return [s for s in SECTIONS if s.quick or not quick]
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = {s.name for s in SECTIONS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise SystemExit(
            f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
        )
    return [s for s in SECTIONS if s.name in wanted]


def resolve_devices(text: str | None) -> tuple[torch.device, ...]:
    if text is None:
        return (torch.device("cpu"),) + (
            (torch.device("cuda"),) if torch.cuda.is_available() else ()
        )
    devices = tuple(torch.device(name.strip()) for name in text.split(",") if name.strip())
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    return devices


def machine(devices: Sequence[torch.device]) -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    names = []
    for device in devices:
        names.append(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "devices": names,
        "commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_section(section: Section, ctx: BenchContext) -> dict[str, Any]:
    """The section's JSON entry: status ok, unavailable (with the reason) or failed."""
    module_name, function_name = section.target.split(":")
    started = time.monotonic()
    ctx.log(f"== {section.name}")
    try:
        function: Callable[[BenchContext], SectionResult] = getattr(
            importlib.import_module(module_name), function_name
        )
        result = function(ctx)
    except SectionUnavailable as exc:
        entry: dict[str, Any] = {"status": "unavailable", "reason": str(exc)}
    except Exception as exc:  # a broken section must not hide the others' figures
        ctx.log(traceback.format_exc())
        entry = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    else:
        entry = {"status": "ok", "rows": result.rows, "notes": result.notes}
    entry["title"] = section.title
    entry["seconds"] = round(time.monotonic() - started, 1)
    entry["date"] = now()
    entry["commit"] = _git_commit()
    return entry


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def merged(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """The earlier results with the later run's sections in place of theirs (new ones after,
    in SECTIONS order). The header (date, machine, command) stays the earlier run's; a
    section keeps its own date and commit, so the table says which came later."""
    same = ("cpu", "cores", "torch")
    if any(earlier["machine"].get(key) != later["machine"].get(key) for key in same):
        raise SystemExit(
            "--merge: the existing results come from another machine or torch "
            f"({', '.join(str(earlier['machine'].get(key)) for key in same)}); "
            "write them to another --out"
        )
    for entry in earlier["sections"].values():  # written before sections had their own
        entry.setdefault("date", earlier["date"])
        entry.setdefault("commit", earlier["machine"].get("commit"))
    later_sections = {name: {**entry, "merged": True} for name, entry in later["sections"].items()}
    sections = {**earlier["sections"], **later_sections}
    order = [s.name for s in SECTIONS]
    ordered = sorted(sections, key=lambda name: order.index(name) if name in order else len(order))
    return {**earlier, "sections": {name: sections[name] for name in ordered}}


def strict_json(value: Any) -> Any:
    """The results with nan and inf as null: results.json stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


# --------------------------------------------------------------------------- Markdown


def format_value(value: Any) -> str:
    """A table cell: a spread as ``median [q1-q3]`` (``[min-max]`` without quartiles),
    numbers to 3 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict) and "median" in value:
        low, high = (value["q1"], value["q3"]) if "q1" in value else (value["min"], value["max"])
        return f"{_number(value['median'])} [{_number(low)}-{_number(high)}]"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value).replace("|", "\\|")


def _number(value: float) -> str:
    if isinstance(value, int) or (
        isinstance(value, float) and value.is_integer() and abs(value) >= 100
    ):
        return f"{int(value):,}"
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        f"# regbench benchmark ({'quick smoke run' if results['quick'] else 'full run'})",
        "",
        f"{results['date']}; {info['cpu']}, {info['cores']} cores; "
        f"devices: {', '.join(info['devices'])}; torch {info['torch']}, "
        f"Python {info['python']}; commit {info['commit'] or 'unknown'}.",
        "",
        "A value `m [a-b]` is the median over the rounds with the interquartile range (IQR) of the "
        "per-round values (their min and max are in results.json).",
    ]
    for name, entry in results["sections"].items():
        lines += ["", f"## {entry['title']} (`{name}`)", ""]
        if entry.get("merged"):
            commit = entry["commit"] or "unknown"
            lines += [f"Measured later: {entry['date']}, commit {commit}.", ""]
        if entry["status"] != "ok":
            lines.append(f"Not measured ({entry['status']}): {entry['reason']}")
            continue
        rows = entry["rows"]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in rows:
            lines.append("| " + " | ".join(format_value(row.get(c)) for c in columns) + " |")
        lines += [""] + [f"- {note}" for note in entry["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", help="comma-separated sections: " + ", ".join(s.name for s in SECTIONS)
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (cheap sections)")
    parser.add_argument("--device", help="comma-separated, e.g. cpu,cuda (default: cpu [+cuda])")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file; .md beside it")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other sections of an existing --out file")  # fmt: skip
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help="holds MNIST/raw (default: $REGBENCH_DATA_ROOT or "
                        "../shared/datasets)")  # fmt: skip
    args = parser.parse_args(argv)

    sections = select(args.only, args.quick)
    devices = resolve_devices(args.device)
    workdir = Path(tempfile.mkdtemp(prefix="regbench-bench-"))
    ctx = BenchContext(quick=args.quick, devices=devices, data_root=args.data_root, workdir=workdir)
    results: dict[str, Any] = {
        "date": now(),
        "machine": machine(devices),
        "quick": args.quick,
        "command": ["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])],
        "sections": {},
    }
    try:
        for section in sections:
            results["sections"][section.name] = run_section(section, ctx)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    if args.merge and args.out.exists():
        results = merged(json.loads(args.out.read_text()), results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(strict_json(results), indent=2, allow_nan=False) + "\n")
    table = markdown(results)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    failed = [n for n, e in results["sections"].items() if e["status"] == "failed"]
    return 1 if failed else 0
