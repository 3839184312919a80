"""Plain functions for scripts and notebooks: the CLI's operations, returning report objects.

They block until done and work inside a running event loop too (Jupyter): the work then runs on
a private loop in a helper thread. Async code should use :class:`~tcia_mirror.Mirror` directly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import anyio

from tcia_mirror.engine.mirror import DownloadOptions, Mirror, RunReport, VerifyReport
from tcia_mirror.errors import first_error
from tcia_mirror.progress import Progress
from tcia_mirror.selection import build_selection
from tcia_mirror.sources.base import Mode
from tcia_mirror.sources.nbia.auth import Credentials
from tcia_mirror.sources.nbia.client import ClientConfig
from tcia_mirror.sources.nbia.profiles import DEFAULT_PROFILE, load_profile
from tcia_mirror.sources.proxy import ProxyChoice

T = TypeVar("T")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion, also from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(make)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = anyio.run(make)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="tcia-mirror", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        err = box["error"]
        if isinstance(err, BaseExceptionGroup):
            err = first_error(err)
        raise err
    value: T = box["value"]
    return value


def connect(
    api: str = DEFAULT_PROFILE,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    user: str | None = None,
    password: str | None = None,
    token_url: str | None = None,
    proxy: str | None = None,
) -> ClientConfig:
    """A client configuration for one archive dialect (``nbia-v4`` by default). ``proxy``:
    an ``http://[user:password@]host:port`` proxy for every request; without it, the
    environment's ``HTTPS_PROXY``/``HTTP_PROXY`` (and ``NO_PROXY``) apply."""
    return ClientConfig(
        profile=load_profile(api),
        base_url=base_url,
        token_url=token_url,
        credentials=Credentials(api_key=api_key, user=user, password=password),
        proxy=ProxyChoice.from_settings(proxy),
    )


def download(
    out: str | Path,
    *,
    config: ClientConfig | None = None,
    collection: str | None = None,
    patients: list[str] | tuple[str, ...] = (),
    study: str | None = None,
    modality: str | None = None,
    body_part: str | None = None,
    manufacturer: str | None = None,
    manufacturer_model: str | None = None,
    shared_lists: list[str] | tuple[str, ...] = (),
    manifests: list[str] | tuple[str, ...] = (),
    series: list[str] | tuple[str, ...] = (),
    series_files: list[str] | tuple[str, ...] = (),
    mode: Mode = "zip",
    concurrency: int = 8,
    layout: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> RunReport:
    """Mirror a selection into ``out`` (or finish it, if it was started before)."""
    selection = build_selection(
        collection=collection,
        patients=tuple(patients),
        study=study,
        modality=modality,
        body_part=body_part,
        manufacturer=manufacturer,
        manufacturer_model=manufacturer_model,
        shared_lists=tuple(shared_lists),
        manifests=tuple(manifests),
        series=tuple(series),
        series_files=tuple(series_files),
    )
    mirror = Mirror(out, config or connect(), progress=progress)
    opts = DownloadOptions(mode=mode, concurrency=concurrency, layout=layout, dry_run=dry_run)
    return run_sync(lambda: mirror.download(None if selection.is_empty() else selection, opts))


def resume(
    out: str | Path,
    *,
    config: ClientConfig | None = None,
    concurrency: int = 8,
    progress: Progress | None = None,
) -> RunReport:
    mirror = Mirror(out, config or _recorded_config(out), progress=progress)
    return run_sync(lambda: mirror.resume(DownloadOptions(concurrency=concurrency)))


def sync(
    out: str | Path,
    *,
    config: ClientConfig | None = None,
    since: date | None = None,
    concurrency: int = 8,
    progress: Progress | None = None,
) -> RunReport:
    mirror = Mirror(out, config or _recorded_config(out), progress=progress)
    return run_sync(lambda: mirror.sync(since, DownloadOptions(concurrency=concurrency)))


def verify(out: str | Path, *, deep: bool = True) -> VerifyReport:
    return run_sync(lambda: Mirror(out).verify(deep=deep))


def status(out: str | Path) -> dict[str, Any]:
    return run_sync(lambda: Mirror(out).status())


def _recorded_config(out: str | Path) -> ClientConfig:
    rec = run_sync(lambda: Mirror(out).recorded())
    return connect(rec.get("api") or DEFAULT_PROFILE, base_url=rec.get("base_url"))
