"""The ``fedal`` command (the console script of ``pip install -e .``): one entry point for what
users do. It only parses the subcommand and hands the remaining arguments to the module that
does the work, whose own argparse parser gives ``fedal <command> --help``; the old entry points
(``python -m simulations.flwr_run``, ``python -m fedal.deploy.local``, ...) call the same
functions.

Why argparse and not click/typer (typer is installed anyway, as a dependency of flwr): every
command already has an argparse parser that tests and scripts call as ``main(argv)``; a second
library would either define each option twice (and the two would drift) or pass the arguments
through unparsed and add nothing. Nested subcommands, per-command help and error messages are
what argparse gives in a few lines.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function, one line) or {subcommand: (module, function, one line)}
COMMANDS: dict = {
    "run": ("simulations.flwr_run", "main", "a simulation through `flwr run` on a local simulation SuperLink "
            "(make demo; python -m simulations.flwr_run)"),
    "compare": ("simulations.compare", "main", "run a comparison suite of methods and seeds "
                "(python -m simulations.compare)"),
    "report": ("simulations.reports.cli", "main", "tables, tests and plots from a results root "
               "(python -m simulations.reports)"),
    "site": {
        "export": ("fedal.data.export", "main", "write a site file for a rehearsal from a data set's "
                   "training split (the server's test split left out)"),
        "check": ("fedal.data.site", "main", "check a site's data, and with --dataset that it fits the run "
                  "(python -m fedal.data.site)"),
    },
    "certs": {
        "init": ("fedal.deploy.certs", "main_init", "CA, SuperLink certificate and SuperNode keys "
                 "(python -m fedal.deploy.certs)"),
        "add": ("fedal.deploy.certs", "main_add", "one more SuperNode key: a site that joins later"),
    },
    "annotate": ("fedal.annotate.app", "main", "a site's labeling page (fedal-annotate, python -m fedal.annotate.app)"),
    "rehearse": ("fedal.deploy.local", "main", "a whole deployment on this machine over loopback "
                 "(python -m fedal.deploy.local)"),
    "pretrain": ("simulations.pretrain", "main", "pretrain a vision backbone (python -m simulations.pretrain)"),
}


def _usage(prog: str, table: dict) -> str:
    width = max(map(len, table))
    lines = [f"usage: {prog} <command> [options]   ({prog} <command> --help for its options)", "", "commands:"]
    for name, entry in table.items():
        desc = entry[2] if isinstance(entry, tuple) else f"{' | '.join(entry)}  ({prog} {name} --help)"
        lines.append(f"  {name:<{width}}  {desc}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "fedal") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    table = COMMANDS
    while True:
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage(prog, table))
            return 0 if argv else 2
        name, argv = argv[0], argv[1:]
        if name not in table:
            print(f"{prog}: error: unknown command {name!r}; valid commands: {', '.join(table)}", file=sys.stderr)
            return 2
        prog, entry = f"{prog} {name}", table[name]
        if isinstance(entry, dict):  # a group: the next word picks its subcommand
            table = entry
            continue
        module, func, _ = entry
        fn = getattr(importlib.import_module(module), func)
        rc = fn(argv, prog=prog)
        return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
