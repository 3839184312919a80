"""Who is measured: the run context, and each tool as a name, its connection count and the command
that runs it (a runner in ``clients/``, or aria2c itself) against a simulator root URL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import CLIENTS

MB = 1e6
GB = 1e9
CAP = 4_000_000  # scenario 1: bytes/s per connection (per response body)
LATENCY = 0.05  # scenarios 1 and 5: seconds before every answer
CONCURRENCY = 8


@dataclass
class Ctx:
    python: str  # runs tcia-mirror, tcia_utils, the naive loop and the simulator
    nbia_python: str | None
    aria2c: str | None
    has_tcia_utils: bool
    work: Path
    repeats: int
    smoke: bool
    only: set[str] | None = None  # tool names to run (smoke: a subset)
    skipped: list[str] = field(default_factory=list)

    def wants(self, tool: str) -> bool:
        return self.only is None or tool in self.only


@dataclass
class Tool:
    name: str  # shown in the table
    key: str  # tcia-mirror | tcia_utils | nbiatoolkit | aria2c | naive
    connections: int
    command: Callable[[str, Path, Path], list[str]]  # (root, series file, out) -> argv
    zipped: bool = False  # the tool leaves ZIPs (verified by their entries)
    repeats: int | None = None  # None: ctx.repeats


# --------------------------------------------------------------------------- tool commands
def mirror_tool(ctx: Ctx, concurrency: int = CONCURRENCY, mode: str = "zip") -> Tool:
    runner = str(CLIENTS / "mirror_runner.py")
    label = f"tcia-mirror (c={concurrency})" + (" --mode single" if mode == "single" else "")
    return Tool(
        label,
        "tcia-mirror",
        concurrency,
        lambda root, sf, out: [
            ctx.python,
            runner,
            "download",
            root,
            str(sf),
            str(out),
            str(concurrency),
            mode,
        ],
    )


def tcia_utils_tool(ctx: Ctx, workers: int, note: str = "") -> Tool:
    runner = str(CLIENTS / "tcia_utils_runner.py")
    return Tool(
        f"tcia_utils ({workers} threads{note})",
        "tcia_utils",
        workers,
        lambda root, sf, out: [
            ctx.python,
            runner,
            "download",
            root,
            str(sf),
            str(out),
            str(workers),
        ],
    )


def nbiatoolkit_tool(ctx: Ctx, processes: int = CONCURRENCY) -> Tool:
    runner = str(CLIENTS / "nbiatoolkit_runner.py")
    assert ctx.nbia_python is not None
    py = ctx.nbia_python
    return Tool(
        f"nbiatoolkit ({processes} processes)",
        "nbiatoolkit",
        processes,
        lambda root, sf, out: [py, runner, "download", root, str(sf), str(out), str(processes)],
    )


def naive_tool(ctx: Ctx, mode: str = "zip", repeats: int | None = None) -> Tool:
    runner = str(CLIENTS / "naive_runner.py")
    what = {
        "zip": "getImage + unzip",
        "zip-md5": "getImage + unzip + MD5 check",
        "single": "getSingleImage",
    }[mode]
    return Tool(
        f"naive loop ({what}, 1 conn)",
        "naive",
        1,
        lambda root, sf, out: [ctx.python, runner, mode, root, str(sf), str(out)],
        repeats=repeats,
    )


def aria2c_tool(
    ctx: Ctx, listing: dict[str, Any], connections: int = CONCURRENCY, single: bool = False
) -> Tool:
    """aria2c on the same getImage URLs (or getSingleImage URLs): the raw transfer floor."""
    assert ctx.aria2c is not None
    exe = ctx.aria2c

    def command(root: str, sf: Path, out: Path) -> list[str]:
        uids = [u for u in sf.read_text().split() if u]
        base = f"{root}/nbia-api/services/v4/"
        lines = []
        sops = {s["uid"]: s["sops"] for s in listing["series"]}
        for uid in uids:
            if single:
                for sop in sops[uid]:
                    lines.append(
                        f"{base}getSingleImage?SeriesInstanceUID={uid}&SOPInstanceUID={sop}"
                    )
                    lines.append(f"  out={uid}/{sop}.dcm")
            else:
                lines.append(f"{base}getImage?SeriesInstanceUID={uid}")
                lines.append(f"  out={uid}.zip")
        url_file = out.parent / f"{out.name}.aria2-input"
        url_file.write_text("\n".join(lines) + "\n")
        return [
            exe,
            "--no-conf",
            "--quiet",
            "--input-file",
            str(url_file),
            "--dir",
            str(out),
            "--max-concurrent-downloads",
            str(connections),
            "--max-connection-per-server",
            "1",
            "--split",
            "1",
            "--file-allocation",
            "none",
            "--allow-overwrite",
            "true",
            "--auto-file-renaming",
            "false",
            "--max-tries",
            "3",
            "--retry-wait",
            "1",
            "--timeout",
            "120",
            "--check-integrity",
            "false",
            "--download-result",
            "hide",
        ]

    what = "getSingleImage" if single else "getImage, raw ZIPs"
    return Tool(
        f"aria2c -j{connections} ({what})", "aria2c", connections, command, zipped=not single
    )


def available(ctx: Ctx, tools: Sequence[Tool | None]) -> list[Tool]:
    keep = []
    for t in tools:
        if t is not None and ctx.wants(t.key):
            keep.append(t)
    return keep


def peers(
    ctx: Ctx, listing: dict[str, Any], *, tcia_utils_workers: Sequence[int]
) -> list[Tool | None]:
    out: list[Tool | None] = [aria2c_tool(ctx, listing) if ctx.aria2c else None]
    for w in tcia_utils_workers if ctx.has_tcia_utils else ():
        out.append(tcia_utils_tool(ctx, w, ", default" if w == 10 else ""))
    out.append(nbiatoolkit_tool(ctx) if ctx.nbia_python else None)
    return out
