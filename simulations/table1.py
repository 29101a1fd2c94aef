"""The paper's Table 1 across settings: one row per method, one column per report.

    python -m simulations.table1 reports/mnist1d-paper-regime-dirichlet reports/mnist1d-dirichlet-pretrained ...
        [--label DIR=NAME ...] [--out FILE.md]

Each report directory is what ``python -m simulations.reports`` wrote (its ``report.json``); a
cell is "better / worse": at how many label budgets the method is significantly better / worse
than the report's baseline (Student's two-sample t-test over seeds, the report's α), with the
number of seeds. The command that regenerates each report is listed under the table (the first
code block of its summary.md). Nothing is recomputed here: the reports are the source.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(report_dir: Path) -> dict:
    path = Path(report_dir) / "report.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: not a report ({e}); make it with python -m simulations.reports") from None
    if "significance" not in data:
        raise SystemExit(f"{path}: the report has no significance counts (made with --baseline none?)")
    return data


def regenerating_command(report_dir: Path) -> str:
    """The first fenced code block of the report's summary.md (where the reports write it)."""
    try:
        lines = (Path(report_dir) / "summary.md").read_text().splitlines()
    except OSError:
        return "?"
    fences = [i for i, line in enumerate(lines) if line.strip() == "```"]
    return "\n".join(lines[fences[0] + 1:fences[1]]) if len(fences) >= 2 else "?"


def seeds(data: dict, method: str) -> int:
    cells = data.get("accuracy", {}).get(method, {})
    return max((len(c.get("seeds", ())) for c in cells.values()), default=0)


def table(reports: list[tuple[str, Path]]) -> str:
    datas = [(name, d, load(d)) for name, d in reports]
    methods: list[str] = []
    for _, _, data in datas:
        base = data.get("baseline")
        for m in [base, *data["significance"]]:
            if m and m not in methods:
                methods.append(m)
    head = "| method | " + " | ".join(name for name, _, _ in datas) + " |"
    lines = [head, "|---|" + "---:|" * len(datas)]
    for m in methods:
        cells = []
        for _, _, data in datas:
            if m == data.get("baseline"):
                cells.append(f"baseline (n={seeds(data, m)})" if m in data.get("accuracy", {}) else "—")
            elif m in data["significance"]:
                c = data["significance"][m]["counts"]
                tested = c["better"] + c["worse"] + c["ties"]
                cells.append(f"{c['better']} / {c['worse']} of {tested} (n={seeds(data, m)})")
            else:
                cells.append("—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Each report's regenerating command:", ""]
    for name, d, _ in datas:
        lines += [f"- {name} (`{d}`):", "", "  ```", *("  " + c for c in regenerating_command(d).splitlines()),
                  "  ```"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", help="report directories (each with report.json and summary.md)")
    ap.add_argument("--label", action="append", default=[], metavar="DIR=NAME",
                    help="column name for a report directory (default: the directory's name)")
    ap.add_argument("--out", help="write the Markdown table here as well")
    args = ap.parse_args(argv)
    labels = {}
    for item in args.label:
        d, sep, name = item.partition("=")
        if not sep:
            raise SystemExit(f"--label expects DIR=NAME, got {item!r}")
        labels[str(Path(d))] = name
    reports = [(labels.get(str(Path(d)), Path(d).name), Path(d)) for d in args.reports]
    text = table(reports)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
