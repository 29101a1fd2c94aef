"""Loading a results root into `Run` objects: the run-directory layout, its validation, filters and
groups (the results schema is in the package docstring)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from fedal.results import CONFIG_FILE, ROUND_REQUIRED, ROUNDS_FILE, SUMMARY_FILE

CONFIG_REQUIRED = ("method", "seed")
# Run-level attributes that `--group-by` can name besides the kebab-case run-config keys.
TOP_LEVEL_KEYS = ("method", "suite", "seed", "config_hash")


class ReportError(Exception):
    """A results root that cannot be reported on; the message says which file and why."""


@dataclass(frozen=True)
class Round:
    round: int
    labels: int
    accuracy: float
    acquired: int = 0
    chosen_clients: tuple[int, ...] = ()
    acquired_per_class: tuple[int, ...] | None = None
    labeled_per_class: tuple[int, ...] | None = None
    time_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    path: Path
    method: str
    suite: str
    seed: int
    config_hash: str
    config: Mapping[str, object]
    rounds: tuple[Round, ...]
    summary: Mapping[str, object]
    # what the run computed with (fedal/numerics.py: its golden hash, kernels, CPU); empty for
    # runs recorded before fedal recorded it
    environment: Mapping[str, object] = field(default_factory=dict)

    def group(self, key: str) -> str:
        """The value of `key` for this run, as a group label: a top-level field or a config key."""
        if key in TOP_LEVEL_KEYS:
            return str(getattr(self, key))
        if key in self.config:
            return _fmt_value(self.config[key])
        raise ReportError(
            f"cannot group by {key!r}: run {self.path} has no such field; "
            f"available: {', '.join(TOP_LEVEL_KEYS)}, or config keys {', '.join(sorted(self.config))}"
        )


@dataclass(frozen=True)
class SkippedRun:
    path: Path
    method: str | None  # from config.json when readable, to say which group lost a seed


@dataclass(frozen=True)
class Results:
    root: Path
    runs: list[Run]
    skipped: list[SkippedRun]


def _fmt_value(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except OSError as e:
        raise ReportError(f"{path}: cannot read: {e}") from e
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _opt_ints(row: dict, key: str) -> tuple[int, ...] | None:
    v = row.get(key)
    return None if v is None else tuple(int(x) for x in v)


def read_rounds(path: Path) -> tuple[Round, ...]:
    """Parse rounds.jsonl; a bad line raises ReportError naming the file and the line number."""
    rounds = []
    with path.open() as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReportError(f"{where}: corrupted JSON line ({e.msg} at column {e.colno})") from e
            if not isinstance(row, dict):
                raise ReportError(f"{where}: expected a JSON object per line")
            missing = [k for k in ROUND_REQUIRED if k not in row]
            if missing:
                raise ReportError(f"{where}: missing field(s) {', '.join(missing)}")
            try:
                acc = float(row["accuracy"])
                rounds.append(
                    Round(
                        round=int(row["round"]),
                        labels=int(row["labels"]),
                        accuracy=acc,
                        acquired=int(row.get("acquired", 0)),
                        chosen_clients=tuple(int(c) for c in row.get("chosen_clients", ())),
                        acquired_per_class=_opt_ints(row, "acquired_per_class"),
                        labeled_per_class=_opt_ints(row, "labeled_per_class"),
                        time_s={k: float(v) for k, v in (row.get("time_s") or {}).items()},
                    )
                )
            except (TypeError, ValueError) as e:
                raise ReportError(f"{where}: bad value: {e}") from e
            if not 0.0 <= acc <= 1.0:
                raise ReportError(f"{where}: accuracy {acc} outside [0, 1]")
    if not rounds:
        raise ReportError(f"{path}: no rounds")
    idx = [r.round for r in rounds]
    if idx != list(range(len(rounds))):
        raise ReportError(f"{path}: rounds must be numbered 0..R in order, got {idx}")
    return tuple(rounds)


def _is_run_dir(d: Path) -> bool:
    return any((d / f).is_file() for f in (CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE))


def load_results(root: str | Path) -> Results:
    """All run directories below `root`: completed runs parsed, incomplete ones listed as skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"results root {root} does not exist or is not a directory")
    dirs = sorted({p.parent for name in (CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE) for p in root.rglob(name)})
    dirs = [d for d in dirs if _is_run_dir(d)]
    if not dirs:
        raise ReportError(
            f"results root {root} contains no run directories (none has {CONFIG_FILE}, {ROUNDS_FILE} or {SUMMARY_FILE})"
        )
    runs, skipped = [], []
    for d in dirs:
        summary_path = d / SUMMARY_FILE
        summary = _read_json(summary_path) if summary_path.is_file() else None
        if not summary or summary.get("completed") is not True:
            # Unfinished (or crashed) run: its last line may be half-written, so it is not parsed;
            # only its method is read, best effort, to say which group is missing a seed.
            method = None
            try:
                method = str(json.loads((d / CONFIG_FILE).read_text()).get("method"))
            except (OSError, ValueError, AttributeError):
                pass
            skipped.append(SkippedRun(d, method))
            continue
        if not (d / CONFIG_FILE).is_file() or not (d / ROUNDS_FILE).is_file():
            raise ReportError(f"run {d} is marked completed but lacks {CONFIG_FILE} or {ROUNDS_FILE}")
        cfg = _read_json(d / CONFIG_FILE)
        missing = [k for k in CONFIG_REQUIRED if k not in cfg]
        if missing:
            raise ReportError(f"{d / CONFIG_FILE}: missing field(s) {', '.join(missing)}")
        runs.append(
            Run(
                path=d,
                method=str(cfg["method"]),
                suite=str(cfg.get("suite", "")),
                seed=int(cfg["seed"]),
                config_hash=str(cfg.get("config_hash", "")),
                config=dict(cfg.get("config") or {}),
                rounds=read_rounds(d / ROUNDS_FILE),
                summary=summary,
                environment=dict(cfg.get("environment") or {}),
            )
        )
    return Results(root=root, runs=runs, skipped=skipped)


def load_runs(root: str | Path) -> list[Run]:
    """Completed runs below `root` (incomplete ones are skipped; see `load_results`)."""
    return load_results(root).runs


def filter_runs(runs: Iterable[Run], filters: Mapping[str, str | Sequence[str]] | None) -> list[Run]:
    """Runs whose group value for every key equals the given string (e.g. dataset=cifar10) or
    one of the given strings (e.g. seed in ("0", "1"))."""
    runs = list(runs)
    if not filters:
        return runs
    allowed = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in filters.items()}
    return [r for r in runs if all(r.group(k) in vs for k, vs in allowed.items())]


def group_runs(runs: Iterable[Run], group_by: str = "method") -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.group(group_by)].append(r)
    return dict(groups)


def _ordered_groups(groups: Iterable[str], baseline: str | None) -> list[str]:
    """Baseline first, then the others alphabetically: a stable order (and colour) per group."""
    gs = sorted(set(groups))
    if baseline in gs:
        gs.remove(baseline)
        gs.insert(0, baseline)
    return gs


def require_group(groups: Iterable[str], name: str, what: str, group_by: str) -> None:
    groups = sorted(set(groups))
    if name not in groups:
        raise ReportError(
            f"{what} {name!r} not found among the {group_by} groups present: {', '.join(groups) or '(none)'}"
        )
