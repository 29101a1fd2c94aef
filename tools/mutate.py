"""``make mutate``: mutation testing of the code that guards paid labels, budgets and state.

A mutant is a copy of a function with one small fault in it (``>=`` made ``>``, a number plus
one, an argument dropped, a string changed); a mutant *survives* when every test that runs the
function still passes. The tool is mutmut (pinned in constraints.txt; why mutmut: README,
"Mutation testing"). What this script adds to it:

- **What is mutated** is read from ``[tool.fedal.mutate]`` in pyproject.toml, the one place to
  edit: groups of files (globs allowed: ``fedal/store/*.py`` once the store is a package), or
  ``file::function`` (``Class.method`` for a method) for part of a file, and the test files whose
  tests may run against them. mutmut's own settings are its ``[tool.mutmut]`` table; this script
  sets its ``only_mutate`` and test selection from the groups.
- **Each mutant runs only the tests that cover it**: per group, mutmut runs the group's tests
  once and records which tests call each function (its "stats"); a mutant of a function runs
  those tests alone, stopping at the first failure, under a CPU-time limit of 15 times their
  measured time (a mutant that loops forever is a timeout, counted as killed). Each group works
  in its own folder, ``mutants/<group>/`` (mutmut keeps one test selection per folder).
- **Bounded and incremental**: ``--budget-s`` (MUTATE_BUDGET_S, default 3600) ends the run after
  that many seconds of wall time; every mutant's result is kept in ``mutants/`` (git-ignored),
  so the next ``make mutate`` goes on where this one stopped: it runs the mutants without a
  result, those of functions whose code changed, and the surviving ones (a new test may kill
  them). ``--max-children`` (default 2: the machine's cores).
- **The report**, ``reports/mutation/README.md``: per group and overall, killed / survived /
  timeouts / not run, the score (killed + timeouts over all checked mutants, the mutants listed
  in ``reports/mutation/equivalent.toml`` left out), and every survivor with file:line and its
  mutation. ``--report`` rewrites it from the kept results without running anything.

Usage: ``python -m tools.mutate [--budget-s S] [--max-children N] [--group NAME ...] [--report]``;
``python -m tools.mutate mutmut GROUP show NAME`` (or ``results``, ``browse``) runs one of mutmut's
own commands in a group's folder with its configuration.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT_DIR = ROOT / "reports" / "mutation"
EQUIVALENT_FILE = REPORT_DIR / "equivalent.toml"
CLASS_SEP = "ǁ"  # mutmut's mangled names: x_<function>, xǁ<Class>ǁ<method>


# ------------------------------------------------------------------------------------ configuration
@dataclass
class Group:
    name: str
    specs: list[str]  # "path/glob.py" or "path.py::function" / "path.py::Class.method"
    tests: list[str]


def load_groups(pyproject: Path = ROOT / "pyproject.toml") -> list[Group]:
    cfg = tomllib.loads(pyproject.read_text())["tool"]["fedal"]["mutate"]
    tests = cfg.get("tests", {})
    groups = [Group(name, list(specs), list(tests.get(name, []))) for name, specs in cfg["modules"].items()]
    unknown = set(tests) - {g.name for g in groups}
    if unknown:
        raise SystemExit(f"[tool.fedal.mutate.tests] names groups that [tool.fedal.mutate.modules] lacks: "
                         f"{sorted(unknown)}")
    untested = [g.name for g in groups if not any(not t.startswith("-") for t in g.tests)]
    if untested:  # mutmut would run the whole suite for them
        raise SystemExit(f"[tool.fedal.mutate.tests] lists no tests for {untested}; name the test files "
                         "whose tests may run against each group")
    return groups


def spec_files(spec: str) -> list[str]:
    pattern = spec.split("::")[0]
    files = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern) if p.suffix == ".py")
    if not files:
        raise SystemExit(f"[tool.fedal.mutate.modules]: {pattern!r} matches no Python file")
    return files


def module_of(path: str) -> str:
    return path[:-3].replace("/", ".").removesuffix(".__init__")


def mangled(function: str) -> str:
    """``Class.method`` or ``function`` as mutmut names it."""
    if "." in function:
        cls, meth = function.split(".", 1)
        return f"x{CLASS_SEP}{cls}{CLASS_SEP}{meth}"
    return f"x_{function}"


def name_patterns(groups: list[Group]) -> dict[str, list[str]]:
    """Per group, fnmatch patterns of its mutants' names (module.mangled__mutmut_N)."""
    out = {}
    for g in groups:
        pats = []
        for spec in g.specs:
            func = spec.split("::")[1] if "::" in spec else None
            for f in spec_files(spec):
                pats.append(f"{module_of(f)}.{mangled(func) if func else '*'}__mutmut_*")
        out[g.name] = pats
    return out


WORK = ROOT / "mutants"  # one working folder per group: WORK/<slug>/, mutmut's mutants/ inside it
LINKED = ("fedal", "strategies", "simulations", "tools", "tests", "weights", "docs", "results", "README.md",
          "pyproject.toml")


def slug(group: Group) -> str:
    return re.sub(r"[^a-z0-9]+", "-", group.name.lower()).strip("-")


def workdir(group: Group) -> Path:
    """The group's working folder: links to the project's files, and mutmut's mutants/ (its
    copies, its mutants, its results). One per group, as mutmut keeps one test selection per
    folder and forgets every result when the selection changes."""
    d = WORK / slug(group)
    d.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = d / name
        if link.is_symlink() and os.readlink(link) != str(ROOT / name):
            link.unlink()  # a mutants/ folder copied from another checkout links to that one's files
        if not link.is_symlink() and (ROOT / name).exists():
            link.symlink_to(ROOT / name)
    return d


def mutmut_overrides(group: Group) -> dict:
    """only_mutate: the group's files; the test selection: the group's tests."""
    return {"only_mutate": sorted({f for s in group.specs for f in spec_files(s)}),
            "pytest_add_cli_args_test_selection": list(group.tests)}


@contextlib.contextmanager
def _mutmut_config(group: Group):
    """In the group's working folder, with only_mutate and the test selection set from the group
    (mutmut's config reader is wrapped: it reads [tool.mutmut] from pyproject.toml and nothing
    else)."""
    import mutmut.configuration as mc

    os.chdir(workdir(group))
    overrides = mutmut_overrides(group)
    read = mc._config_reader

    def reader():
        s = read()
        return lambda key, default: overrides[key] if key in overrides else s(key, default)

    mc._config_reader = reader
    mc.reset_config()
    yield


def run_mutmut_cli(args: list[str], group: Group) -> None:
    """mutmut's command line in the group's working folder (``_mutmut_config``)."""
    with _mutmut_config(group):
        from mutmut.__main__ import cli

        cli.main(args=args, prog_name="mutmut", standalone_mode=True)


# ------------------------------------------------------------------------------------ results
@dataclass
class Mutant:
    name: str
    path: str
    status: str
    line: int | None = None
    change: str = ""
    why_equivalent: str | None = None


@dataclass
class GroupResult:
    group: Group
    mutants: list[Mutant] = field(default_factory=list)

    def count(self, *statuses: str) -> int:
        return sum(m.status in statuses for m in self.mutants)


def status_of(code) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def load_results(groups: list[Group], locate_survivors: bool = True) -> list[GroupResult]:
    patterns = name_patterns(groups)
    equivalents = load_equivalents()
    out = []
    for g in groups:
        res = GroupResult(g)
        for path in sorted({f for s in g.specs for f in spec_files(s)}):
            meta = WORK / slug(g) / "mutants" / (path + ".meta")
            codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
            for name, code in sorted(codes.items(), key=lambda kv: _natural(kv[0])):
                if any(fnmatch.fnmatchcase(name, p) for p in patterns[g.name]):
                    res.mutants.append(Mutant(name, path, status_of(code)))
        for m in res.mutants if locate_survivors else []:
            if m.status in ("survived", "no tests") or m.name in equivalents:
                m.line, m.change = locate(m, WORK / slug(g))
            if m.name in equivalents and m.status in ("survived", "no tests"):
                eq = equivalents[m.name]
                if eq.get("change") == m.change:
                    m.status, m.why_equivalent = "equivalent", eq["why"]
            if m.status in ("survived", "no tests") and sql_case_only(m):
                m.status, m.why_equivalent = "equivalent", SQL_CASE
        out.append(res)
    return out


def _natural(name: str):
    head, _, n = name.rpartition("__mutmut_")
    return head, int(n) if n.isdigit() else 0


def load_equivalents() -> dict[str, dict]:
    """reports/mutation/equivalent.toml: ``[[mutant]]`` tables with ``name``, ``change`` (the
    mutated line as the report shows it, so that an entry whose function changed since no longer
    applies) and ``why``."""
    if not EQUIVALENT_FILE.exists():
        return {}
    return {e["name"]: e for e in tomllib.loads(EQUIVALENT_FILE.read_text()).get("mutant", [])}


_function_cache: dict[str, dict[str, tuple[int, int]]] = {}


def _functions(path: str) -> dict[str, tuple[int, int]]:
    """Mangled name -> (first line, last line) of each function and method in ``path``."""
    if path not in _function_cache:
        tree = ast.parse((ROOT / path).read_text())
        spans = {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                spans[mangled(node.name)] = (node.lineno, node.end_lineno)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        spans[mangled(f"{node.name}.{item.name}")] = (item.lineno, item.end_lineno)
        _function_cache[path] = spans
    return _function_cache[path]


def locate(m: Mutant, where: Path) -> tuple[int | None, str]:
    """(line in the source file, "old → new") of a mutant, from mutmut's diff of its function."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = os.getcwd()
    os.chdir(where)  # mutmut reads mutants/ relative to the working directory
    try:
        diff = get_diff_for_mutant(m.name, path=m.path).splitlines()
    except Exception as e:  # a mutant of a function that is gone: say so instead of failing the report
        return None, f"(no diff: {type(e).__name__})"
    finally:
        os.chdir(cwd)
    removed = [ln[1:] for ln in diff if ln.startswith("-") and not ln.startswith("---")]
    added = [ln[1:] for ln in diff if ln.startswith("+") and not ln.startswith("+++")]
    change = " / ".join(s.strip() for s in removed) + " → " + " / ".join(s.strip() for s in added)
    func = m.name.rsplit(".", 1)[1].rsplit("__mutmut_", 1)[0]
    start, end = _functions(m.path).get(func, (1, 0))
    lines = (ROOT / m.path).read_text().splitlines()
    line = None
    if removed:
        first = removed[0].strip()
        line = next((i + 1 for i in range(start - 1, min(end, len(lines))) if lines[i].strip() == first), None)
    return line or start, change


SQL_CALLS = {"execute", "executemany", "executescript", "_read"}
SQL_CASE = ("the case of SQL keywords and names in a statement sent to SQLite, which reads them "
            "case-insensitively (its quoted string values, which it does not, are unchanged)")
_sql_spans: dict[str, list[tuple[int, int]]] = {}


def sql_case_only(m: Mutant) -> bool:
    """Whether mutant ``m`` only changes the case of SQL text passed to sqlite (execute,
    executemany, executescript, PoolStore._read), leaving its quoted values ('open', ...) as
    they were: a rule for a kind of equivalent mutant that mutmut makes by the hundred."""
    if m.line is None or " → " not in m.change:
        return False
    old, new = m.change.split(" → ", 1)
    quoted = re.compile(r"'[^']*'")
    if old == new or old.lower() != new.lower() or quoted.findall(old) != quoted.findall(new):
        return False
    if m.path not in _sql_spans:
        spans = []
        for node in ast.walk(ast.parse((ROOT / m.path).read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name in SQL_CALLS:
                    spans.append((node.lineno, node.end_lineno))
        _sql_spans[m.path] = spans
    n_lines = old.count(" / ") + 1
    return any(a <= m.line and m.line + n_lines - 1 <= b for a, b in _sql_spans[m.path])


def score(results: list[GroupResult]) -> tuple[int, int]:
    killed = sum(r.count("killed", "timeout", "caught by type check") for r in results)
    checked = killed + sum(r.count("survived", "no tests", "suspicious", "segfault") for r in results)
    return killed, checked


def write_report(results: list[GroupResult], run_note: str) -> Path:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    lines = ["# Mutation testing: the code that guards paid labels, budgets and state", "",
             "Written by `make mutate` (tools/mutate.py; mutmut). Regenerate with:", "",
             "    make mutate                       # runs what is not run yet, then writes this file",
             "    MUTATE_BUDGET_S=7200 make mutate  # a longer wall-time budget (default 3600 s)",
             "    .venv/bin/python -m tools.mutate --report   # this file from the kept results only",
             "", f"Last run: {run_note}", "",
             "Score = (killed + timeouts) / (all checked mutants), the equivalent mutants "
             "(reports/mutation/equivalent.toml, listed below) left out. \"not run\": mutants the "
             "time budget did not reach (the next `make mutate` goes on with them).", "",
             "| group | files | mutants | killed | timeout | survived | no tests | equivalent | not run | score |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        k, c = score([r])
        files = ", ".join(r.group.specs)
        lines.append(f"| {r.group.name} | {files} | {len(r.mutants)} | {r.count('killed', 'caught by type check')} "
                     f"| {r.count('timeout')} | {r.count('survived', 'suspicious', 'segfault')} | "
                     f"{r.count('no tests')} | {r.count('equivalent')} | {r.count('not checked')} | "
                     f"{_pct(k, c)} |")
    k, c = score(results)
    total = sum(len(r.mutants) for r in results)
    lines.append(f"| **all** | | {total} | {sum(r.count('killed', 'caught by type check') for r in results)} | "
                 f"{sum(r.count('timeout') for r in results)} | "
                 f"{sum(r.count('survived', 'suspicious', 'segfault') for r in results)} | "
                 f"{sum(r.count('no tests') for r in results)} | {sum(r.count('equivalent') for r in results)} | "
                 f"{sum(r.count('not checked') for r in results)} | **{_pct(k, c)}** |")
    idle = [r.group.name for r in results if not r.mutants]
    if idle:
        lines += ["", f"Not run yet (no results; `python -m tools.mutate --group NAME` runs one): "
                      f"{', '.join(idle)}."]
    lines += ["", "## Surviving mutants", ""]
    surv = [m for r in results for m in r.mutants if m.status in ("survived", "no tests", "suspicious", "segfault")]
    if not surv:
        lines.append("None.")
    for m in surv:
        lines.append(f"- `{m.path}:{m.line}` {m.status}: `{m.change}` ({m.name})")
    lines += ["", "## Equivalent mutants (left out of the score)", "",
              "Judged one by one in reports/mutation/equivalent.toml, and by one rule (tools/mutate.py, "
              f"sql_case_only): {SQL_CASE}.", ""]
    eq = [m for r in results for m in r.mutants if m.status == "equivalent"]
    if not eq:
        lines.append("None.")
    for m in eq:
        why = "SQL case (the rule above)" if m.why_equivalent == SQL_CASE else m.why_equivalent
        lines.append(f"- `{m.path}:{m.line}` `{m.change}`: {why} ({m.name})")
    lines.append("")
    out = REPORT_DIR / "README.md"
    out.write_text("\n".join(lines))
    return out


def _pct(k: int, c: int) -> str:
    return f"{100 * k / c:.1f}%" if c else "n/a"


# ------------------------------------------------------------------------------------ the run
def run(groups: list[Group], budget_s: float, max_children: int) -> str:
    """mutmut run, group after group in the order of [tool.fedal.mutate.modules], on each group's
    mutants without a result and its surviving ones, in a child process (its own process group),
    ended with SIGINT (mutmut keeps every result it has) when ``budget_s`` runs out. mutmut
    reruns every mutant named on its command line, so only those are named; a run that made new
    mutants (a function changed) is followed by one for them."""
    deadline = time.monotonic() + budget_s
    notes = []
    for g in groups:
        if prepare(g):
            subprocess.run([sys.executable, "-m", "tools.mutate", "regenerate", g.name, str(max_children)],
                           cwd=ROOT, check=True)
        for attempt in range(3):
            names = to_run([g], survivors=attempt == 0)
            left = deadline - time.monotonic()
            if not names:
                break
            if left < 30:
                notes.append(f"{g.name}: {len(names)} mutant(s) left for the next run")
                break
            cmd = [sys.executable, "-m", "tools.mutate", "mutmut", g.name, "run", "--max-children",
                   str(max_children), *names]
            proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
            try:
                rc = proc.wait(timeout=left)
                if rc != 0:
                    notes.append(f"{g.name}: mutmut run exited {rc}")
                    break
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                notes.append(f"stopped in {g.name!r} at the time budget ({budget_s:.0f} s); the next make "
                             "mutate goes on")
                return "; ".join(notes)
            except KeyboardInterrupt:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait()
                raise
    return "; ".join(notes) or "every mutant has a result"


def _stale_tests(copy: Path) -> list[str]:
    """The test files whose copy in a group's folder differs from the project's (none while the
    folder has no copy yet)."""
    if not copy.is_dir():
        return []
    return [f.name for f in sorted((ROOT / "tests").glob("*.py"))
            if not (copy / f.name).exists() or (copy / f.name).read_bytes() != f.read_bytes()]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(group: Group) -> bool:
    """Before mutmut runs in a group's folder; True when mutmut must make the group's mutants
    anew (``regenerate``) before anything is named to it.

    mutmut decides by modification times whether a source file changed since it made its
    mutants, and a checkout, a merge or a folder copied from another worktree all move those
    times: a refactored file then kept the mutants (and results) of its old text. So the marker
    records each file's content digest when its mutants were made, and a copy made from other
    text is removed: mutmut makes it again and resets the results of exactly the functions whose
    text changed (it keeps the rest by each function's hash). A copy it last made unmutated is
    removed likewise. When the group's files change, its record of which tests call which
    function is made anew (it knows only the functions that had mutants when it was made)."""
    work = workdir(group) / "mutants"
    files = sorted({f for s in group.specs for f in spec_files(s)})
    marker = work / "fedal-mutate-files.json"
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        recorded = None
    # an older marker was the bare list of files, without the digests: every copy is suspect
    digests = recorded.get("sources", {}) if isinstance(recorded, dict) else {}
    current = {f: _digest(ROOT / f) for f in files}
    dropped = False
    for f in files:
        copy = work / f
        if copy.exists() and ("__mutmut_" not in copy.read_text() or digests.get(f) != current[f]):
            copy.unlink()
            dropped = True
    # the tests run from mutmut's copy of tests/ in the group's folder, which nothing refreshes:
    # a test written since the last run (to kill a survivor) is copied in, and the record of which
    # tests call which function made anew, or the survivor is run against the old tests again
    stale = _stale_tests(work / "tests")
    if stale:
        shutil.copytree(ROOT / "tests", work / "tests", dirs_exist_ok=True)
    # a test file added to the group's selection is not in mutmut's record either: without a new
    # record its tests never run against the mutants
    tests_changed = not isinstance(recorded, dict) or recorded.get("tests") != list(group.tests)
    if dropped or stale or tests_changed or digests.keys() != set(files):
        (work / "mutmut-stats.json").unlink(missing_ok=True)
        work.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"files": files, "sources": current, "tests": list(group.tests)}, indent=1))
    return dropped


def regenerate(group: Group, max_children: int) -> None:
    """mutmut's mutant generation alone (what ``mutmut run`` does first), in the group's folder:
    it copies the project's unmutated files afresh and makes the removed copies' mutants, with
    the results of changed functions reset to "not checked"."""
    import mutmut.__main__ as mm
    from mutmut.mutation.trampoline import set_mutant_under_test
    from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths

    with _mutmut_config(group):
        set_mutant_under_test("mutant_generation")
        Path("mutants").mkdir(exist_ok=True)
        copy_src_dir()
        copy_also_copy_files()
        setup_source_paths()
        mm.create_mutants(max_children)


def to_run(groups: list[Group], survivors: bool = True) -> list[str]:
    """What to name on mutmut's command line: per group, its mutants without a result and (with
    ``survivors``) the surviving ones, which a new test may kill now (not those listed as
    equivalent); or the patterns of its names while mutmut has not made its mutants yet."""
    patterns = name_patterns(groups)
    again = ("not checked", "survived", "no tests", "suspicious") if survivors else ("not checked",)
    names: list[str] = []
    for r in load_results(groups, locate_survivors=survivors):
        if r.mutants:
            names += [m.name for m in r.mutants if m.status in again]
        else:
            names += patterns[r.group.name]
    return names


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    groups = load_groups()
    if argv[:1] == ["mutmut"]:
        by_name = {g.name: g for g in groups}
        if len(argv) < 2 or argv[1] not in by_name:
            raise SystemExit(f"usage: python -m tools.mutate mutmut GROUP COMMAND ...; groups: {', '.join(by_name)}")
        run_mutmut_cli(argv[2:], by_name[argv[1]])
        return 0
    if argv[:1] == ["regenerate"]:  # run()'s child: mutmut's generation step for one group
        regenerate({g.name: g for g in groups}[argv[1]], int(argv[2]))
        return 0
    p = argparse.ArgumentParser(prog="python -m tools.mutate", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=float(os.environ.get("MUTATE_BUDGET_S", 3600)))
    p.add_argument("--max-children", type=int, default=int(os.environ.get("MUTATE_MAX_CHILDREN", 2)))
    p.add_argument("--group", action="append", help="run only this group (repeatable); the report has all")
    p.add_argument("--report", action="store_true", help="only rewrite the report from the kept results")
    a = p.parse_args(argv)
    names = {g.name for g in groups}
    if a.group and not set(a.group) <= names:
        p.error(f"unknown group(s) {sorted(set(a.group) - names)}; valid: {', '.join(sorted(names))}")
    note = "report only"
    old = REPORT_DIR / "README.md"
    if a.report and old.exists():  # keep what the last run said
        last = [ln for ln in old.read_text().splitlines() if ln.startswith("Last run: ")]
        note = last[0].removeprefix("Last run: ").split(", ", 1)[1] if last and ", " in last[0] else note
    if not a.report:
        t0 = time.monotonic()
        chosen = [g for g in groups if not a.group or g.name in a.group]
        note = run(chosen, a.budget_s, a.max_children)
        note += f"; wall time {time.monotonic() - t0:.0f} s"
    results = load_results(groups)
    stamp = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    if a.report and old.exists() and last:
        stamp = last[0].removeprefix("Last run: ").split(", ", 1)[0]
    out = write_report(results, f"{stamp}, {note}")
    k, c = score(results)
    for r in results:
        print(f"{r.group.name:28s} {_pct(*score([r])):>7s}  ({len(r.mutants)} mutants, "
              f"{r.count('survived', 'no tests')} surviving, {r.count('not checked')} not run)")
    print(f"{'all':28s} {_pct(k, c):>7s}; report: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
