"""tcia-mirror benchmarks: side by side with the tools users run today, on the simulator.

    python benchmarks/run.py [--smoke] [--results DIR] [--scenarios 1,2] [--repeats 3]

Environment: ``BENCH_SCENARIOS`` (e.g. ``1,2``), ``BENCH_REPEATS`` (default 3),
``BENCH_NBIA_PYTHON`` (the interpreter that has nbiatoolkit; default
``benchmarks/.venv-nbiatoolkit/bin/python``), ``BENCH_TOOLS`` (e.g. ``tcia-mirror,naive``).
Writes ``<results>/scenario-N.json``, ``<results>/latest.json`` and ``<results>/latest.md``; a
full run (all seven scenarios, not ``--smoke``) also refreshes the table in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import COLUMNS, HERE, compile_sources, machine, markdown_table  # noqa: E402
from scenarios import SCENARIOS, Ctx  # noqa: E402

README = HERE / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
EXTRA_COLUMNS = {
    "1": [("connections", "conns")],
    "2": [("of_aria2c", "MB/s ÷ aria2c")],
    "5": [("requests", "requests"), ("requests_per_s", "req/s")],
    "6": [("process_s", "process s"), ("target", "< 2 s, < 200 MB")],
}


def _imports(python: str, module: str) -> bool:
    try:
        done = subprocess.run(
            [python, "-c", f"import {module}"], capture_output=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def detect(args: argparse.Namespace, work: Path) -> Ctx:
    python = sys.executable
    nbia = os.environ.get("BENCH_NBIA_PYTHON") or str(HERE / ".venv-nbiatoolkit" / "bin" / "python")
    tools_env = os.environ.get("BENCH_TOOLS")
    only = set(tools_env.split(",")) if tools_env else None
    if args.smoke and only is None:
        only = {"tcia-mirror", "naive"}
    wanted = only or {"tcia-mirror", "tcia_utils", "nbiatoolkit", "aria2c", "naive"}
    ctx = Ctx(
        python=python,
        nbia_python=(
            nbia
            if "nbiatoolkit" in wanted and Path(nbia).exists() and _imports(nbia, "nbiatoolkit")
            else None
        ),
        aria2c=shutil.which("aria2c") if "aria2c" in wanted else None,
        has_tcia_utils="tcia_utils" in wanted and _imports(python, "tcia_utils.nbia"),
        work=work,
        repeats=args.repeats,
        smoke=args.smoke,
        only=only,
    )
    if ctx.aria2c is None and "aria2c" in wanted:
        ctx.skipped.append("aria2c: not installed (apt-get install aria2); skipped")
    if not ctx.has_tcia_utils and "tcia_utils" in wanted:
        ctx.skipped.append(f"tcia_utils: not importable by {python}; skipped")
    if ctx.nbia_python is None and "nbiatoolkit" in wanted:
        ctx.skipped.append(f"nbiatoolkit: no interpreter with it at {nbia}; skipped")
    return ctx


def render(result: dict[str, Any]) -> str:
    cols = list(COLUMNS)
    extra = EXTRA_COLUMNS.get(result["id"], [])
    cols[5:5] = extra  # before "time ÷ tcia-mirror"
    lines = [f"### Scenario {result['id']}: {result['title']}", ""]
    lines.append(markdown_table(result["rows"], cols))
    lines.append("")
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    if result.get("error"):
        lines.append(f"- **scenario failed**: {result['error']}")
    return "\n".join(lines) + "\n"


def header(ctx: Ctx, seconds: float, scenarios: list[str]) -> str:
    m = machine()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run {when} on {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, {m['platform']}; "
        f"scenarios {','.join(scenarios)}; median of {ctx.repeats} runs unless the runs column "
        f"says otherwise; whole run {seconds / 60:.1f} min.",
    ]
    for note in ctx.skipped:
        lines.append(f"Skipped: {note}")
    return "\n\n".join(lines) + "\n"


def update_readme(text: str) -> None:
    body = README.read_text()
    if BEGIN not in body or END not in body:
        return
    head, rest = body.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"updated the table in {README}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny data, seconds not minutes")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--scenarios", default=os.environ.get("BENCH_SCENARIOS", "1,2,3,4,5,6,7"))
    p.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_REPEATS", "3")))
    args = p.parse_args(argv)
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; expected some of {', '.join(SCENARIOS)}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    results: Path = args.results
    results.mkdir(parents=True, exist_ok=True)
    work = results / "work"
    compile_sources()
    ctx = detect(args, work)
    for note in ctx.skipped:
        print(f"note: {note}", flush=True)
    t0 = time.monotonic()
    done: list[dict[str, Any]] = []
    failed = False
    for sid in wanted:
        print(f"scenario {sid}", flush=True)
        started = time.monotonic()
        try:
            result = SCENARIOS[sid](ctx)
        except Exception as exc:  # one broken scenario must not hide the others
            failed = True
            result = {
                "id": sid,
                "title": "failed",
                "rows": [],
                "error": f"{type(exc).__name__}: {exc}",
            }
        result["seconds"] = time.monotonic() - started
        (results / f"scenario-{sid}.json").write_text(json.dumps(result, indent=2, default=str))
        done.append(result)
        print(render(result), flush=True)
    seconds = time.monotonic() - t0
    text = header(ctx, seconds, wanted) + "\n" + "\n".join(render(r) for r in done)
    (results / "latest.md").write_text(text)
    summary = {"machine": machine(), "seconds": seconds, "skipped": ctx.skipped, "scenarios": done}
    (results / "latest.json").write_text(json.dumps(summary, indent=2, default=str))
    shutil.rmtree(work, ignore_errors=True)
    print(f"results: {results / 'latest.md'} ({seconds / 60:.1f} min)")
    if not args.smoke and sorted(wanted) == sorted(SCENARIOS) and not failed:
        update_readme(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
