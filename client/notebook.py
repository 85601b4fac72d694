"""regbench from a notebook (or any Python script): submit, wait, read results as pandas.

::

    from client.notebook import Regbench

    rb = Regbench("http://127.0.0.1:8000")        # default: $REGBENCH_SERVER, $REGBENCH_TOKEN
    sweep = rb.submit("grids/digits.yaml")         # a grid (a sweep) or one spec; path or dict
    rb.wait(sweep)                                 # a progress bar until it has finished
    table = rb.results_frame(sweep)                # one row per configuration: mean, std, n
    runs = rb.experiments_frame(sweep)             # one row per experiment: seed, metrics
    files = rb.download_artifacts(runs.index[0], "artifacts/", prefix="analyses")

Like ``client.remote`` it speaks HTTP only: importing it loads neither torch nor regcore,
the job store, Celery nor MLflow, so it installs and starts anywhere the server can be
reached. pandas is imported by the two ``*_frame`` methods only; the progress bar is
tqdm's (``tqdm.auto``: a widget in Jupyter) when tqdm is installed, else a text bar
that redraws one line on a terminal or in a notebook and, written to a file or a
pipe, prints a new line only when the figures change.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

import yaml

from client.remote import (
    FINISHED,
    RegbenchClient,
    ServerError,
    _file_path,
    _segment,
    path_inside,
)

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_SERVER = "http://127.0.0.1:8000"
LIST_PAGE = 500  # experiments per GET /experiments page (the API's limit)
BAR_WIDTH = 24
ETA_SEPARATOR = "  ETA "
LOG_STEP_PERCENT = 10  # off a terminal: a new line per 10 % of progress or changed counts


@dataclass(frozen=True)
class Submission:
    """What ``Regbench.submit`` sent: a sweep (a grid) or one experiment (a spec).

    ``new`` counts the experiments this submission recorded (0: all existed already and
    are not run again); ``body`` is the server's whole answer.
    """

    kind: Literal["sweep", "experiment"]
    id: str
    name: str
    size: int
    new: int
    body: dict[str, Any] = field(repr=False)


Target = Submission | str


class Bar(Protocol):
    def update(self, fraction: float, text: str) -> None: ...

    def close(self) -> None: ...


class Regbench(RegbenchClient):
    """``RegbenchClient`` plus what a notebook wants: submit a file or a dict, wait with
    a progress bar, results as pandas DataFrames, a run's artifacts into a folder.

    ``server`` defaults to ``$REGBENCH_SERVER`` (else http://127.0.0.1:8000) and
    ``token`` to ``$REGBENCH_TOKEN``. Every ``RegbenchClient`` method works too.
    """

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            server or os.environ.get("REGBENCH_SERVER") or DEFAULT_SERVER,
            token if token is not None else os.environ.get("REGBENCH_TOKEN") or None,
            timeout_s,
            **kwargs,
        )

    # ------------------------------------------------------------------- submitting

    def submit(self, document: Mapping[str, Any] | str | Path, force: bool = False) -> Submission:
        """Submit a grid (``{base, grid, name?}``: one sweep) or one spec, given as a dict
        or as the path of a YAML/JSON file. Submitting the same thing again records
        nothing new (``new == 0``); ``force=True`` runs it again."""
        body = load_document(document)
        if "base" in body and "grid" in body:
            answer = self.submit_sweep(body, force=force)
            return Submission(
                "sweep", answer["id"], answer["name"], answer["size"],
                answer["new_experiments"], answer,
            )  # fmt: skip
        answer = self.submit_experiment(body, force=force)
        new = 1 if answer.get("created") else 0
        return Submission("experiment", answer["id"], answer["name"], 1, new, answer)

    # ------------------------------------------------------------------- waiting

    def wait(
        self,
        target: Target,
        *,
        progress: bool | Literal["text"] = True,
        poll_s: float = 2.0,
        timeout_s: float | None = None,
        stream: IO[str] | None = None,
    ) -> dict[str, Any]:
        """Poll a sweep or an experiment until it has finished (succeeded, failed or
        cancelled) and return its last state. ``progress``: True shows tqdm's bar when
        tqdm is installed, else the text bar; ``"text"`` always the text bar; False
        nothing. The text bar writes to ``stream`` (default ``sys.stdout``). A
        ``TimeoutError`` after ``timeout_s`` seconds leaves the work running."""
        kind, target_id = self._resolve(target)
        read = self.sweep if kind == "sweep" else self.experiment
        bar = make_bar(f"{kind} {target_id[:12]}", progress, stream)
        try:
            return self._poll(
                lambda: read(target_id),
                lambda state: bar.update(*describe_state(kind, state)),
                poll_s,
                timeout_s,
            )
        finally:
            bar.close()

    def _resolve(self, target: Target) -> tuple[Literal["sweep", "experiment"], str]:
        if isinstance(target, Submission):
            return target.kind, target.id
        try:
            self.sweep(target)
            return "sweep", target
        except ServerError as exc:
            if not exc.not_found:
                raise
        self.experiment(target)  # a 404 here says the id names nothing
        return "experiment", target

    # ------------------------------------------------------------------- results

    def results_frame(self, sweep: Target, baseline: str | None = None) -> pd.DataFrame:
        """One row per configuration (the index, in grid order): ``experiments`` and
        ``succeeded``, then ``<metric>_mean``, ``<metric>_std`` and ``<metric>_n`` for
        every result metric (the columns of ``regbench results --csv``). The comparison
        with ``baseline`` stays in ``results()``."""
        import pandas as pd

        answer = self.results(_id_of(sweep), baseline=baseline)
        records = []
        for row in answer["rows"]:
            record: dict[str, Any] = {
                "configuration": row["configuration"],
                "experiments": row["experiments"],
                "succeeded": row["succeeded"],
            }
            for metric in answer["metrics"]:
                summary = row["metrics"].get(metric) or {}
                for statistic in ("mean", "std", "n"):
                    record[f"{metric}_{statistic}"] = summary.get(statistic)
            records.append(record)
        columns = ["configuration", "experiments", "succeeded"] + [
            f"{metric}_{statistic}"
            for metric in answer["metrics"]
            for statistic in ("mean", "std", "n")
        ]
        return pd.DataFrame.from_records(records, columns=columns).set_index("configuration")

    def experiments_frame(self, sweep: Target) -> pd.DataFrame:
        """One row per experiment of the sweep (index: the experiment id): its
        configuration, seed, status, MLflow run and every final metric it recorded
        (missing ones, of a run that failed or is still running, are NaN)."""
        import pandas as pd

        records = []
        for summary in self.list_experiments(sweep=_id_of(sweep)):
            detail = self.experiment(summary["id"])
            seed = (detail.get("spec") or {}).get("training", {}).get("seed")
            records.append(
                {
                    "id": detail["id"],
                    "configuration": detail["configuration"],
                    "seed": seed,
                    "status": detail["status"],
                    "mlflow_run_id": detail["mlflow_run_id"],
                    "mlflow_url": detail.get("mlflow_url"),
                    **(detail.get("metrics") or {}),
                }
            )
        frame = pd.DataFrame.from_records(records)
        if frame.empty:
            return pd.DataFrame(columns=["configuration", "seed", "status"]).rename_axis("id")
        return frame.sort_values(["configuration", "seed"], kind="stable").set_index("id")

    def list_experiments(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """Every experiment (of one sweep, given its id), all pages: ``GET /experiments``."""
        found: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"limit": LIST_PAGE, "offset": len(found)}
            if sweep is not None:
                params["sweep"] = sweep
            page = self._json("GET", "/experiments", params=params)
            found.extend(page["data"])
            if not page["data"] or len(found) >= page["count"]:
                return found

    # ------------------------------------------------------------------- files

    def download_artifacts(
        self, experiment: Target, dest_dir: str | Path, prefix: str | None = None
    ) -> list[Path]:
        """Download an experiment's MLflow artifacts (checkpoints, plots, tables) through
        the API into ``dest_dir``, keeping their paths (``plots/loss.png`` ->
        ``dest_dir/plots/loss.png``); ``prefix`` keeps only the files under that folder.
        Returns the files written."""
        experiment_id = _id_of(experiment)
        wanted = (prefix or "").strip("/")
        written = []
        for item in self.artifacts(experiment_id):
            path = item["path"]
            if item["is_dir"] or (wanted and not (path == wanted or path.startswith(wanted + "/"))):
                continue
            url = f"/experiments/{_segment(experiment_id)}/artifacts/{_file_path(path)}"
            written.append(self._download(url, path_inside(Path(dest_dir), path)))
        return written


# ----------------------------------------------------------------------- helpers


def load_document(document: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A dict as given, or the mapping in a YAML (or JSON) file."""
    if isinstance(document, Mapping):
        return dict(document)
    path = Path(document)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} must hold a mapping (a spec, or a grid with base and grid)")
    return dict(loaded)


def describe_state(kind: str, state: dict[str, Any]) -> tuple[float, str]:
    """(fraction done, a short text) of a sweep's or an experiment's state."""
    status = state["status"]
    if kind == "sweep":
        counts = " · ".join(f"{n} {name}" for name, n in state["experiments"].items() if n)
        fraction = float(state.get("progress") or 0.0)
        eta = state.get("eta_s")
        tail = f"{ETA_SEPARATOR}{format_seconds(eta)}" if eta and status not in FINISHED else ""
        return (1.0 if status == "succeeded" else fraction), f"{status}: {counts}{tail}"
    jobs = state.get("jobs") or []
    done = [1.0 if job["state"] in FINISHED else float(job.get("progress") or 0) for job in jobs]
    fraction = sum(done) / len(done) if done else 0.0
    running = [job for job in jobs if job["state"] == "running"]
    doing = ""
    if running:
        message = running[0].get("message")
        doing = f" ({running[0]['kind']}: {message})" if message else f" ({running[0]['kind']})"
    return (1.0 if status == "succeeded" else fraction), f"{status}{doing}"


def format_seconds(seconds: float) -> str:
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )


def make_bar(label: str, progress: bool | Literal["text"], stream: IO[str] | None) -> Bar:
    if progress is False:
        return _NoBar()
    if progress is True and stream is None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return _TqdmBar(tqdm, label)
    return TextBar(label, stream or sys.stdout)


class _NoBar:
    def update(self, fraction: float, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class _TqdmBar:
    def __init__(self, tqdm: Any, label: str) -> None:
        self.bar = tqdm(
            total=100, desc=label, bar_format="{desc} {bar} {percentage:3.0f}% {postfix}"
        )

    def update(self, fraction: float, text: str) -> None:
        self.bar.n = round(100 * min(max(fraction, 0.0), 1.0))
        self.bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        self.bar.close()


class TextBar:
    """``sweep 1a2b3c:  46% ███████████░░░░░░░░░░░░░  running: 1 succeeded · 5 running``.

    On a terminal or in a notebook (``redraw``) one line is rewritten in place at every
    change. Written to a file or a pipe, a new line comes only every 10 % of progress or
    when the counts (the text without its ETA) change, so a log stays short: not one
    line per poll.
    """

    def __init__(self, label: str, stream: IO[str], redraw: bool | None = None) -> None:
        self.label, self.stream = label, stream
        self.redraw = _can_redraw(stream) if redraw is None else redraw
        self.last = ""
        self.logged: tuple[int, str] | None = None

    def update(self, fraction: float, text: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        filled = round(BAR_WIDTH * fraction)
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        line = f"{self.label}: {100 * fraction:3.0f}% {bar}  {text}"
        if line == self.last:
            return
        if self.redraw:
            self.stream.write("\r" + line.ljust(len(self.last)))
        else:
            key = (int(100 * fraction) // LOG_STEP_PERCENT, text.split(ETA_SEPARATOR)[0])
            if key == self.logged:
                return
            self.logged = key
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last = line

    def close(self) -> None:
        if self.redraw and self.last:
            self.stream.write("\n")
            self.stream.flush()


def _can_redraw(stream: IO[str]) -> bool:
    """A terminal, or a Jupyter kernel's output (not a TTY, but it honours ``\\r``)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):
        return False
    return "ipykernel" in sys.modules and stream in (sys.stdout, sys.stderr)


def _id_of(target: Target) -> str:
    return target.id if isinstance(target, Submission) else target
