"""Mirror-engine subcommands: plan, download, resume, verify, status, sync, demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any

import anyio

from tcia_mirror.config import client_config, resolve
from tcia_mirror.engine.mirror import DownloadOptions, Mirror, RunReport
from tcia_mirror.errors import InputError, StateError, StoreUnreachableError
from tcia_mirror.progress import Progress
from tcia_mirror.selection import SELECTORS, Selection, build_selection
from tcia_mirror.store import opener


def _selection_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("selection (combinable; the plan is their union)")
    g.add_argument("--collection", metavar="NAME")
    g.add_argument(
        "--patient", dest="patients", action="append", default=[], metavar="ID", help="repeatable"
    )
    g.add_argument("--study", metavar="UID")
    g.add_argument("--modality", metavar="M")
    g.add_argument("--body-part", metavar="B")
    g.add_argument("--manufacturer", metavar="M")
    g.add_argument("--manufacturer-model", metavar="M")
    g.add_argument(
        "--shared-list", dest="shared_lists", action="append", default=[], metavar="NAME"
    )
    g.add_argument(
        "--manifest",
        dest="manifests",
        action="append",
        default=[],
        metavar="FILE",
        help=".tcia or .s5cmd (IDC) manifest, recognised by content; repeatable",
    )
    g.add_argument("--series", action="append", default=[], metavar="UID", help="repeatable")
    g.add_argument(
        "--series-file", dest="series_files", action="append", default=[], metavar="FILE"
    )
    return p


def _out_option(required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--out", required=required, metavar="DIR", help="the mirror folder")
    p.add_argument(
        "--state",
        metavar="URL",
        help="where progress is kept: postgresql://USER@HOST:PORT/DB shared by workers on many "
        "hosts (env TCIA_STATE; default DIR/.tcia-mirror/state.sqlite)",
    )
    return p


def _worker_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--lease",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a series whose worker stopped heartbeating for this long is taken over (default 60)",
    )
    return p


def _run_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="parallel transfers")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-md5", action="store_true", help="skip the MD5-carrying image endpoint")
    p.add_argument(
        "--zip-workers",
        type=int,
        metavar="N",
        help="processes that inflate, hash and write ZIP entries beside the main one "
        "(default: one per core, at most 2; 0: all in the main process)",
    )
    p.add_argument(
        "--give-up-after",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="retry a series (with backoff) until this long passes without a file of it "
        "committed (default 600)",
    )
    return p


def add_engine_commands(sub: Any, conn: argparse.ArgumentParser) -> None:
    sel, out, run = _selection_options(), _out_option(), _run_options()
    p = sub.add_parser("plan", parents=[conn, sel, out], help="record the plan and print its size")
    p.add_argument(
        "--max-connections-total",
        type=int,
        metavar="N",
        help="archive connections in flight across all workers of the plan (default 16)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--concurrency", type=int, default=8, metavar="N")
    p.add_argument("--layout", metavar="TEMPLATE")
    p.set_defaults(func=_cmd_plan)

    d = sub.add_parser(
        "download", parents=[conn, sel, out, run, _worker_options()], help="mirror a selection"
    )
    d.add_argument("--max-connections-total", type=int, metavar="N")
    d.add_argument("--mode", choices=["zip", "single"], default="zip")
    d.add_argument(
        "--layout",
        metavar="TEMPLATE",
        help="default, nbia-classic, nbia-descriptive, flat or a template",
    )
    d.add_argument("--dry-run", action="store_true", help="print the plan and check disk space")
    d.add_argument("--json", action="store_true", help="print the run report as JSON")
    d.set_defaults(func=_cmd_download)

    r = sub.add_parser("resume", parents=[conn, out, run], help="finish an interrupted mirror")
    r.add_argument("--mode", choices=["zip", "single"], default="zip")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cmd_resume)

    v = sub.add_parser("verify", parents=[conn, out], help="re-check every file on disk")
    v.add_argument("--json", action="store_true")
    v.add_argument("--quick", action="store_true", help="skip MD5 of file contents")
    v.add_argument(
        "--remote",
        action="store_true",
        help="also ask the archive again; series it changed are reported as archive_changed",
    )
    v.set_defaults(func=_cmd_verify)

    # the connection options are accepted (one set of options for every command) and ignored
    s = sub.add_parser("status", parents=[conn, out], help="how far the mirror is (local)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_status)

    y = sub.add_parser("sync", parents=[conn, out, run], help="fetch what is new or changed")
    y.add_argument("--since", metavar="YYYY-MM-DD")
    y.add_argument(
        "--manifest",
        dest="manifests",
        action="append",
        default=[],
        metavar="FILE",
        help="a newer manifest: its bucket series replace the recorded ones; series it no "
        "longer lists are reported and kept",
    )
    y.add_argument("--json", action="store_true")
    y.set_defaults(func=_cmd_sync)

    w = sub.add_parser(
        "worker",
        parents=[conn, out, run, _worker_options()],
        help="work a plan shared in PostgreSQL, alongside workers on other hosts",
    )
    w.add_argument("--mode", choices=["zip", "single"], default="zip")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=_cmd_worker)

    m = sub.add_parser(
        "demo",
        parents=[_out_option(required=False)],
        help="a guided tour on the built-in simulator",
    )
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=_cmd_demo, out=None)


# -- helpers -----------------------------------------------------------------------------------
def _progress(args: argparse.Namespace) -> Progress:
    if getattr(args, "no_progress", False) or not sys.stderr.isatty():
        from tcia_mirror.cli.lines import LineProgress  # noqa: PLC0415

        # cron-friendly: no chatter; the outcome is the one summary line on stdout
        return LineProgress(quiet=True)
    from tcia_mirror.cli.tqdm import TqdmProgress  # noqa: PLC0415

    return TqdmProgress()


def _selection(args: argparse.Namespace) -> Selection:
    """The selection options, by their names in :func:`build_selection` (one place to add one)."""
    return build_selection(**{name: getattr(args, name) for name in SELECTORS})


def _state(args: argparse.Namespace) -> str | None:
    """--state, else TCIA_STATE, else the config file's ``state``; None: the SQLite file."""
    return resolve(vars(args)).get("state")


def _exists(args: argparse.Namespace) -> bool:
    """Whether the mirror has state: its folder's SQLite file, or a shared database."""
    return bool(_state(args)) or Mirror.exists(args.out)


def _mirror(args: argparse.Namespace, *, recorded_ok: bool, progress: Progress | None) -> Mirror:
    recorded: dict[str, Any] = {}
    store = opener(_state(args))
    if recorded_ok and _exists(args):
        try:
            rec = _run(Mirror(args.out, open_store=store).recorded)
        except StoreUnreachableError:
            raise
        except StateError:
            rec = {}
        recorded = {k: rec[k] for k in ("api", "base_url", "s3_endpoint") if rec.get(k)}
    settings = resolve(vars(args), defaults=recorded)
    return Mirror(args.out, client_config(settings), progress=progress, open_store=store)


def _run(coro: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(coro)


def _print_report(args: argparse.Namespace, report: RunReport) -> int:
    if getattr(args, "json", False):
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.summary())
        for p in report.problems[:20]:
            print(
                f"  problem: series {p['series']}: {p['kind']} (expected {p.get('expected')}, found {p.get('found')})"
            )
    if report.no_longer_listed and not getattr(args, "json", False):
        gone = report.no_longer_listed
        print(f"no longer listed, kept ({len(gone)}):")
        for name in gone[:20]:
            print(f"  {name}")
    return report.exit_code


def _options(args: argparse.Namespace, **extra: Any) -> DownloadOptions:
    if getattr(args, "lease", 60.0) <= 0:
        raise InputError("--lease must be more than 0 seconds")
    if (getattr(args, "zip_workers", None) or 0) < 0:
        raise InputError("--zip-workers must be 0 or more")
    return DownloadOptions(
        mode=getattr(args, "mode", "zip"),
        concurrency=args.concurrency,
        md5=not args.no_md5,
        give_up_after=args.give_up_after,
        lease=getattr(args, "lease", 60.0),
        max_connections_total=getattr(args, "max_connections_total", None),
        zip_workers=getattr(args, "zip_workers", None),
        **extra,
    )


# -- commands ----------------------------------------------------------------------------------
def _cmd_plan(args: argparse.Namespace) -> int:
    selection = _selection(args)
    if selection.is_empty() and not _exists(args):
        raise InputError(
            "nothing selected: give --collection, --shared-list, --manifest, --series or --series-file"
        )
    mirror = _mirror(args, recorded_ok=True, progress=None)
    plan = _run(
        lambda: mirror.plan(
            selection,
            concurrency=args.concurrency,
            layout=args.layout,
            max_connections_total=args.max_connections_total,
        )
    )
    data = {
        "series": len(plan.series),
        "instances": plan.total_instances,
        "bytes": plan.total_bytes,
        "missing": plan.missing,
        "plan": [
            {
                "series": p.uid,
                "collection": p.collection,
                "patient": p.patient_id,
                "study": p.study_uid,
                "expected_count": p.expected_count,
                "expected_bytes": p.expected_bytes,
            }
            for p in plan.series
        ],
    }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(
            f"plan: {data['series']} series, {data['instances']} instances, "
            f"{data['bytes'] / 1e6:.1f} MB recorded in {args.out}"
        )
        if plan.missing:
            print(f"not on the archive: {', '.join(plan.missing)}")
    return 1 if plan.missing else 0


def _cmd_download(args: argparse.Namespace) -> int:
    selection = _selection(args)
    fresh = not _exists(args)
    if selection.is_empty() and fresh:
        raise InputError(
            "nothing selected: give --collection, --shared-list, --manifest, --series or --series-file"
        )
    progress = _progress(args)
    mirror = _mirror(args, recorded_ok=True, progress=progress)
    opts = _options(args, layout=args.layout, dry_run=args.dry_run)
    try:
        report = _run(
            lambda: mirror.download(selection if not selection.is_empty() else None, opts)
        )
    finally:
        progress.close()
    if args.dry_run:
        print(
            f"dry run: {report.planned_series} series, {report.planned_instances} instances, "
            f"{report.planned_bytes / 1e6:.1f} MB; enough free space in {args.out}"
        )
        if report.missing:
            print(f"not on the archive: {', '.join(report.missing)}")
        return 1 if report.missing else 0
    return _print_report(args, report)


def _existing_mirror_run(
    args: argparse.Namespace, call: Callable[[Mirror], Awaitable[RunReport]]
) -> int:
    """resume / sync / worker: a mirror that exists, its recorded connection, one report."""
    if not _exists(args):
        raise StateError(
            f"{args.out} is not a tcia-mirror mirror; start one with `tcia-mirror download`"
        )
    progress = _progress(args)
    mirror = _mirror(args, recorded_ok=True, progress=progress)
    try:
        report = _run(lambda: call(mirror))
    finally:
        progress.close()
    return _print_report(args, report)


def _cmd_resume(args: argparse.Namespace) -> int:
    return _existing_mirror_run(args, lambda m: m.resume(_options(args)))


def _cmd_worker(args: argparse.Namespace) -> int:
    """0 when every series of the plan is complete, 1 naming the failed ones."""
    if not _state(args):
        raise InputError(
            "worker needs a shared plan: give --state postgresql://USER@HOST:PORT/DB "
            "(one host alone: tcia-mirror resume --out DIR)"
        )
    progress = _progress(args)
    mirror = _mirror(args, recorded_ok=True, progress=progress)
    try:
        report = _run(lambda: mirror.work(_options(args)))
    finally:
        progress.close()
    code = _print_report(args, report)
    failed = _run(mirror.failed_series)
    if failed and not getattr(args, "json", False):
        print(f"failed series ({len(failed)}): {', '.join(failed[:20])}")
    series = report.status.get("series", {})
    return max(code, 0 if series.get("complete") == series.get("total") and not failed else 1)


def _cmd_sync(args: argparse.Namespace) -> int:
    since: date | None = None
    if args.since:
        try:
            since = datetime.strptime(args.since, "%Y-%m-%d").date()
        except ValueError:
            raise InputError(f"--since {args.since!r}: expected a date as YYYY-MM-DD") from None
    selection = build_selection(manifests=args.manifests) if args.manifests else None
    return _existing_mirror_run(args, lambda m: m.sync(since, _options(args), selection=selection))


def _cmd_verify(args: argparse.Namespace) -> int:
    # --remote: the recorded profile and base URL, overridden by settings and flags; without
    # it verify is local and the connection options are accepted and ignored
    mirror = (
        _mirror(args, recorded_ok=True, progress=None)
        if args.remote
        else Mirror(args.out, open_store=opener(_state(args)))
    )
    report = _run(lambda: mirror.verify(deep=not args.quick, remote=args.remote))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        state = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"verify: {report.series_checked} series checked, {state}")
        for p in report.problems[:50]:
            print(
                f"  series {p['series']}: {p['kind']} (expected {p.get('expected')}, found {p.get('found')})"
            )
        kinds = {p["kind"] for p in report.problems}
        if kinds - {"archive_changed"}:
            print(f"fix with: tcia-mirror resume --out {args.out}")
        if "archive_changed" in kinds:
            print(f"fetch the archive's changes with: tcia-mirror sync --out {args.out}")
    return 0 if report.ok else 1


def _cmd_status(args: argparse.Namespace) -> int:
    summary = _run(Mirror(args.out, open_store=opener(_state(args))).status)
    if args.json:
        print(json.dumps(summary))
    else:
        s, i, b = summary["series"], summary["instances"], summary["bytes"]
        print(
            f"series: {s['complete']}/{s['total']} complete, {s['failed']} failed, {s['pending']} pending; "
            f"instances: {i['complete']}/{i['total']}; bytes: {b['complete'] / 1e6:.1f}/{b['total'] / 1e6:.1f} MB"
        )
        if i["complete"]:
            print(
                f"MD5: {i['archive_md5']} of {i['complete']} files checked against the archive's, "
                f"{i['local_md5']} against ours only"
            )
        if summary.get("sources"):
            print(
                "sources: "
                + ", ".join(
                    f"{name} {c['complete']}/{c['total']} series complete"
                    for name, c in summary["sources"].items()
                )
            )
    done = summary["series"]["complete"] == summary["series"]["total"]
    return 0 if done else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from tcia_mirror.cli.demo import run_demo  # noqa: PLC0415

    return run_demo(out=args.out, progress=not args.no_progress)
