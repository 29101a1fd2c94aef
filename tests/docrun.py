"""Runs the ``bash`` blocks of a Markdown page as written (tests/test_docs.py).

A block runs in a fresh ``bash -e -o pipefail`` that first sources the environment the blocks
before it exported (so ``export``s and an activated virtual environment carry over, as in one
terminal), in a neutral working directory (the blocks use absolute paths). An HTML comment on
the line before a block, ``<!-- doc-test: ... -->``, says how it runs:

- ``skip (why)``: not run;
- ``background NAME``: started in its own process group and left running (a SuperLink);
  stopped by ``stop()``;
- ``retry N``: run again until it succeeds, for up to N seconds (a service coming up);
- ``on each site``: run once per site with ``K`` = 1..n and that site's own environment
  (``site_env(k)``), which the site's later blocks see; with ``background`` as well, each site's
  run is left running (a SuperNode).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fedal.deploy import QUIET_ENV

_BLOCK = re.compile(r"(?:^<!-- doc-test: (?P<mark>[^\n]*?) -->\n)?^```bash\n(?P<code>.*?)^```", re.S | re.M)


@dataclass
class Block:
    code: str
    mark: str
    line: int

    @property
    def skip(self) -> bool:
        return self.mark.startswith("skip")

    @property
    def background(self) -> bool:
        return "background" in self.mark

    @property
    def per_site(self) -> bool:
        return "on each site" in self.mark

    @property
    def retry_s(self) -> float:
        m = re.search(r"retry (\d+)", self.mark)
        return float(m.group(1)) if m else 0.0


def blocks(page: Path, start: str | None = None, end: str | None = None) -> list[Block]:
    """The page's bash blocks, in order; ``start``/``end``: only those between the headings
    starting with these texts (``end`` excluded)."""
    text = page.read_text()
    lo = text.index(start) if start else 0
    hi = text.index(end, lo) if end else len(text)
    return [Block(m.group("code"), m.group("mark") or "", text.count("\n", 0, lo + m.start()) + 1)
            for m in _BLOCK.finditer(text[lo:hi])]


class DocRunner:
    def __init__(self, workdir: Path, env: dict[str, str], site_env: dict[int, dict[str, str]] | None = None):
        self.workdir = Path(workdir)
        self.cwd = self.workdir / "cwd"  # where each block starts: neither the checkout nor the deployment
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.logs = self.workdir / "doc-logs"
        self.logs.mkdir(exist_ok=True)
        self.env = env
        self.common = self.workdir / "env.sh"
        self.common.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        self.sites = sorted(site_env or {})
        self.site_files = {}
        for k, extra in (site_env or {}).items():
            self.site_files[k] = self.workdir / f"env-site-{k}.sh"
            self.site_files[k].write_text("".join(f"export {n}={shlex.quote(v)}\n" for n, v in extra.items()))
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.outputs: list[tuple[Block, str]] = []

    def _script(self, block: Block, site: int | None, keep_env: bool) -> str:
        src = f". {shlex.quote(str(self.common))}\n"
        if site is not None:
            src += f". {shlex.quote(str(self.site_files[site]))}\n"
        out = self.site_files[site] if site is not None else self.common
        tail = f"\nexport -p > {shlex.quote(str(out))}.new && mv {shlex.quote(str(out))}.new {shlex.quote(str(out))}\n" \
            if keep_env else "\n"
        return f"set -e -o pipefail\n{src}cd {shlex.quote(str(self.cwd))}\n{block.code}{tail}"

    def run(self, block: Block, timeout: float = 600) -> None:
        if block.skip:
            return
        for site in (self.sites if block.per_site else [None]):
            name = f"line{block.line}" + (f"-site{site}" if site is not None else "")
            if block.background:
                log = open(self.logs / f"{name}.log", "wb")
                p = subprocess.Popen(["bash", "-c", self._script(block, site, keep_env=False)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=_base_env())
                log.close()
                self.procs.append((name, p))
                continue
            deadline = time.monotonic() + max(block.retry_s, 0)
            while True:
                r = subprocess.run(["bash", "-c", self._script(block, site, keep_env=True)], capture_output=True,
                                   text=True, timeout=timeout, env=_base_env())
                (self.logs / f"{name}.log").write_text(r.stdout + r.stderr)
                if r.returncode == 0 or time.monotonic() > deadline:
                    break
                self.check_background()
                time.sleep(2)
            self.outputs.append((block, r.stdout + r.stderr))
            if r.returncode != 0:
                raise AssertionError(f"the block at line {block.line}{f' (site {site})' if site else ''} failed "
                                     f"with exit status {r.returncode}:\n{block.code}\n--- output ---\n"
                                     f"{(r.stdout + r.stderr)[-4000:]}{self.background_logs()}")

    def start(self, block: Block, log: Path) -> subprocess.Popen:
        """``block`` started in the background, its output in ``log`` (the caller watches it);
        stopped by ``stop()``."""
        with open(log, "wb") as f:
            # Ctrl-C as a terminal gives it: a block runs in the foreground of the operator's shell,
            # where SIGINT is not ignored; pytest itself may have been started in the background
            # (`make test &`, a CI runner), whose ignored SIGINT every child would inherit, and
            # Python installs no KeyboardInterrupt for an inherited SIG_IGN
            p = subprocess.Popen(["bash", "-c", self._script(block, None, keep_env=False)], stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True, env=_base_env(),
                                 preexec_fn=_default_sigint)
        self.procs.append((f"line{block.line}", p))
        return p

    def check_background(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                raise AssertionError(f"the background block {name} exited ({p.returncode}):"
                                     f"{self.background_logs()}")

    def background_logs(self) -> str:
        return "".join(f"\n--- {name} ---\n{(self.logs / f'{name}.log').read_text(errors='replace')[-2000:]}"
                       for name, _ in self.procs if (self.logs / f"{name}.log").exists())

    def stop(self) -> None:
        """SIGINT (Ctrl-C: a `fedal rehearse` stops what it started), then SIGTERM, then SIGKILL,
        to every background block's process group."""
        for _, p in reversed(self.procs):
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    p.wait(30 if sig == signal.SIGINT else 10)
                    break
                except subprocess.TimeoutExpired:
                    continue


def _default_sigint() -> None:
    """In a started block's process, before bash: SIGINT and SIGQUIT back to their defaults."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _base_env() -> dict[str, str]:
    # what a fresh terminal has: the blocks activate the virtual environment themselves
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **QUIET_ENV, "FEDAL_TORCH_THREADS": "1",
            "COLUMNS": "200"}  # rich's tables (flwr ls) in full, as in a wide terminal
