"""How long ``make test`` and ``make check`` take: each step's wall and CPU time, recorded while
they run, and ``docs/timing.md`` written from those records (never typed by hand).

A record is a JSON-lines log, one object per line: a ``begin`` line (what ran, where, the
machine's load), one ``step`` line per timed step, an ``end`` line.  The Makefile times its
steps through ``step``; ``.ci/run`` brackets ``make install`` and ``make test`` with ``begin``
and ``end`` in ``target/timing/ci.jsonl``; ``make timing`` times ``make check`` here and writes
the report from both logs (the CI log of a fresh clone: ``TIMING_CI_LOG=<clone>/target/timing/ci.jsonl``).

Usage:
  timing.py begin LOG --run NAME --context TEXT   start a new log (replaces LOG)
  timing.py step LOG LABEL -- CMD...               run CMD, append its times; exit with its status
  timing.py end LOG                                append the end line (total wall and CPU)
  timing.py report --ci LOG --check LOG --out docs/timing.md [--readme README.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
README_BEGIN = "<!-- timing:begin (bench/timing.py report writes this line) -->"
README_END = "<!-- timing:end -->"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _append(log: Path, record: dict[str, Any]) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def begin(log: Path, run: str, context: str) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    _append(
        log,
        {
            "kind": "begin",
            "run": run,
            "context": context,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "t": time.time(),
            "commit": _commit(),
            "cpus": os.cpu_count(),
            "load": os.getloadavg(),
        },
    )
    return 0


def step(log: Path, label: str, argv: list[str]) -> int:
    start, cpu0 = time.time(), _children_cpu()
    # close_fds=False: a make below keeps the jobserver of the make above (make test's lanes).
    rc = subprocess.call(argv, close_fds=False)
    _append(
        log,
        {
            "kind": "step",
            "label": label,
            "t": start,
            "wall": round(time.time() - start, 1),
            "cpu": round(_children_cpu() - cpu0, 1),
            "rc": rc,
            "load": os.getloadavg(),
        },
    )
    return rc


def end(log: Path) -> int:
    _append(log, {"kind": "end", "t": time.time(), "load": os.getloadavg()})
    return 0


def _read(log: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    begins = [r for r in records if r["kind"] == "begin"]
    if not begins:
        raise SystemExit(f"{log}: no begin line")
    head = begins[-1]
    after = [r for r in records if r["t"] >= head["t"] and r["kind"] != "begin"]
    steps = [r for r in after if r["kind"] == "step"]
    ends = [r for r in after if r["kind"] == "end"]
    return head, steps, (ends[-1] if ends else None)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _load(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def cpu_model() -> str:
    """The CPU's model name (report.py's machine table reads it too)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run_table(log: Path) -> tuple[list[str], float, float]:
    head, steps, tail = _read(log)
    last = max((s["t"] + s["wall"] for s in steps), default=head["t"])
    wall = (tail["t"] if tail else last) - head["t"]
    cpu = sum(s["cpu"] for s in steps)
    lines = [
        f"### `{head['run']}`: {_minutes(wall)}",
        "",
        f"{head['context']}; commit `{head['commit']}`, started {head['started']}, "
        f"{head['cpus']} CPUs visible. Load average (1/5/15 min) at the start "
        f"{_load(head['load'])}, at the end {_load(tail['load'] if tail else steps[-1]['load'])}: "
        "other work on the machine slows every step.",
        "",
        "| step | starts at | wall | CPU (user+sys) | exit |",
        "|---|---|---|---|---|",
    ]
    for s in sorted(steps, key=lambda s: s["t"]):
        lines.append(
            f"| {s['label']} | {_minutes(s['t'] - head['t'])} | {_minutes(s['wall'])} | "
            f"{_minutes(s['cpu'])} | {s['rc']} |"
        )
    lines += [
        "",
        f"Wall time {_minutes(wall)}; CPU time of its steps {_minutes(cpu)} (steps that run side by "
        "side overlap in wall time; `starts at` shows which). With the machine to itself the run "
        f"could not take less than CPU time / CPUs: {_minutes(cpu / head['cpus'])}.",
        "",
    ]
    return lines, wall, cpu


def report(ci: Path, check: Path, out: Path, readme: Path | None) -> int:
    ci_lines, ci_wall, ci_cpu = _run_table(ci)
    check_lines, check_wall, _ = _run_table(check)
    doc = [
        "# How long the test commands take",
        "",
        "<!-- Generated by `make timing` (bench/timing.py). Do not edit by hand. -->",
        "",
        "Written by `bench/timing.py report` from the step times `make test` and `make check` "
        "record while they run (`target/timing/*.jsonl`). `make timing` times `make check` in this "
        "tree and reads the log of a fresh clone's CI run (`CI=true bash .ci/run`, which records "
        "`target/timing/ci.jsonl` in that clone). The machines are shared: the load average "
        "says how much else ran.",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs visible, Python {platform.python_version()} "
        f"for this script.",
        "",
        *ci_lines,
        *check_lines,
    ]
    out.write_text("\n".join(doc).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {out}")
    if readme is not None:
        text = readme.read_text(encoding="utf-8")
        i, j = text.find(README_BEGIN), text.find(README_END)
        if i < 0 or j < i:
            print(f"{readme}: no {README_BEGIN} ... {README_END} markers", file=sys.stderr)
            return 1
        head, steps, _ = _read(ci)
        # The CLI is built only where it is absent: say which the figure includes.
        cli = sum(s["wall"] for s in steps if s["label"] == "wasmtime-cli")
        built = "the wasmtime CLI build" if cli >= 60 else "the wasmtime CLI already installed"
        line = (
            f"On a {head['cpus']}-core machine shared with other work, a fresh clone's "
            f"`CI=true bash .ci/run` (set-up and `make test`, {built}) took "
            f"{_minutes(ci_wall)} ({_minutes(ci_cpu)} of CPU time: no less than "
            f"{_minutes(ci_cpu / head['cpus'])} on idle cores) and `make check` on a warm tree "
            f"{_minutes(check_wall)} ([each step](docs/timing.md))."
        )
        readme.write_text(text[: i + len(README_BEGIN)] + "\n" + line + "\n" + text[j:], encoding="utf-8")
        print(f"updated {readme}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("begin")
    p.add_argument("log", type=Path)
    p.add_argument("--run", required=True)
    p.add_argument("--context", required=True)
    p = sub.add_parser("step")
    p.add_argument("log", type=Path)
    p.add_argument("label")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p = sub.add_parser("end")
    p.add_argument("log", type=Path)
    p = sub.add_parser("report")
    p.add_argument("--ci", type=Path, required=True)
    p.add_argument("--check", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--readme", type=Path)
    args = parser.parse_args()
    if args.command == "begin":
        return begin(args.log, args.run, args.context)
    if args.command == "step":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        return step(args.log, args.label, argv)
    if args.command == "end":
        return end(args.log)
    return report(args.ci, args.check, args.out, args.readme)


if __name__ == "__main__":
    sys.exit(main())
