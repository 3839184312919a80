"""tcia-mirror: asynchronous, resumable, verified bulk downloader for The Cancer Imaging Archive.

Blocking helpers for scripts and notebooks::

    import tcia_mirror as tm
    report = tm.download("mirror/", collection="LIDC-IDRI", modality="CT")
    print(report.summary()); tm.verify("mirror/").ok

Async code uses :class:`Mirror` and :class:`ArchiveClient` directly.
"""

from __future__ import annotations

from importlib import import_module as _import_module

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: even `typing` costs time before the guard

__version__ = "0.1.0"

# Names are imported on first use (PEP 562), so `import tcia_mirror` and the console script's
# first lines are cheap: the entry point has its Ctrl-C guard in place before the heavy imports.
_EXPORTS = {
    "connect": ".api",
    "download": ".api",
    "resume": ".api",
    "run_sync": ".api",
    "status": ".api",
    "sync": ".api",
    "verify": ".api",
    "Credentials": ".sources.nbia.auth",
    "ArchiveClient": ".sources.nbia.client",
    "ClientConfig": ".sources.nbia.client",
    "RawResponse": ".sources.nbia.client",
    "DownloadOptions": ".engine.mirror",
    "Mirror": ".engine.mirror",
    "RunReport": ".engine.reports",
    "VerifyReport": ".engine.reports",
    "AuthError": ".errors",
    "BadRequestError": ".errors",
    "DataError": ".errors",
    "DiskError": ".errors",
    "InputError": ".errors",
    "MirrorLockedError": ".errors",
    "NotFoundError": ".errors",
    "ProtocolError": ".errors",
    "RateLimitedError": ".errors",
    "RemoteError": ".errors",
    "ServerError": ".errors",
    "StateError": ".errors",
    "TciaMirrorError": ".errors",
    "UnknownEndpointError": ".errors",
    "UnreachableError": ".errors",
    "Patient": ".sources.nbia.models",
    "Series": ".sources.nbia.models",
    "SeriesSize": ".sources.nbia.models",
    "Study": ".sources.nbia.models",
    "Profile": ".sources.nbia.profiles",
    "available_profiles": ".sources.nbia.profiles",
    "load_profile": ".sources.nbia.profiles",
    "NullProgress": ".progress",
    "Progress": ".progress",
    "RecordingProgress": ".progress",
    "RetryPolicy": ".sources.http",
    "Selection": ".selection",
    "build_selection": ".selection",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__
    from typing import Any

    from tcia_mirror.api import connect, download, resume, run_sync, status, sync, verify
    from tcia_mirror.engine.mirror import DownloadOptions, Mirror
    from tcia_mirror.engine.reports import RunReport, VerifyReport
    from tcia_mirror.errors import (
        AuthError,
        BadRequestError,
        DataError,
        DiskError,
        InputError,
        MirrorLockedError,
        NotFoundError,
        ProtocolError,
        RateLimitedError,
        RemoteError,
        ServerError,
        StateError,
        TciaMirrorError,
        UnknownEndpointError,
        UnreachableError,
    )
    from tcia_mirror.progress import NullProgress, Progress, RecordingProgress
    from tcia_mirror.selection import Selection, build_selection
    from tcia_mirror.sources.http import RetryPolicy
    from tcia_mirror.sources.nbia.auth import Credentials
    from tcia_mirror.sources.nbia.client import ArchiveClient, ClientConfig, RawResponse
    from tcia_mirror.sources.nbia.models import Patient, Series, SeriesSize, Study
    from tcia_mirror.sources.nbia.profiles import Profile, available_profiles, load_profile

__all__ = [
    "ArchiveClient",
    "AuthError",
    "BadRequestError",
    "ClientConfig",
    "Credentials",
    "DataError",
    "DiskError",
    "DownloadOptions",
    "InputError",
    "Mirror",
    "MirrorLockedError",
    "NotFoundError",
    "NullProgress",
    "Patient",
    "Profile",
    "Progress",
    "ProtocolError",
    "RateLimitedError",
    "RawResponse",
    "RecordingProgress",
    "RemoteError",
    "RetryPolicy",
    "RunReport",
    "Selection",
    "Series",
    "SeriesSize",
    "ServerError",
    "StateError",
    "Study",
    "TciaMirrorError",
    "UnknownEndpointError",
    "UnreachableError",
    "VerifyReport",
    "__version__",
    "available_profiles",
    "build_selection",
    "connect",
    "download",
    "load_profile",
    "resume",
    "run_sync",
    "status",
    "sync",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
