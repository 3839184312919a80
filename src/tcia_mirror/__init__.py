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
    "connect": "._api",
    "download": "._api",
    "resume": "._api",
    "run_sync": "._api",
    "status": "._api",
    "sync": "._api",
    "verify": "._api",
    "Credentials": "._auth",
    "ArchiveClient": "._client",
    "ClientConfig": "._client",
    "RawResponse": "._client",
    "DownloadOptions": "._engine",
    "Mirror": "._engine",
    "RunReport": "._engine",
    "VerifyReport": "._engine",
    "AuthError": "._errors",
    "BadRequestError": "._errors",
    "DataError": "._errors",
    "DiskError": "._errors",
    "InputError": "._errors",
    "MirrorLockedError": "._errors",
    "NotFoundError": "._errors",
    "ProtocolError": "._errors",
    "RateLimitedError": "._errors",
    "RemoteError": "._errors",
    "ServerError": "._errors",
    "StateError": "._errors",
    "TciaMirrorError": "._errors",
    "UnknownEndpointError": "._errors",
    "UnreachableError": "._errors",
    "Patient": "._models",
    "Series": "._models",
    "SeriesSize": "._models",
    "Study": "._models",
    "Profile": "._profiles",
    "available_profiles": "._profiles",
    "load_profile": "._profiles",
    "NullProgress": "._progress",
    "Progress": "._progress",
    "RecordingProgress": "._progress",
    "RetryPolicy": "._retry",
    "Selection": "._selection",
    "build_selection": "._selection",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__
    from typing import Any

    from ._api import connect, download, resume, run_sync, status, sync, verify
    from ._auth import Credentials
    from ._client import ArchiveClient, ClientConfig, RawResponse
    from ._engine import DownloadOptions, Mirror, RunReport, VerifyReport
    from ._errors import (
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
    from ._models import Patient, Series, SeriesSize, Study
    from ._profiles import Profile, available_profiles, load_profile
    from ._progress import NullProgress, Progress, RecordingProgress
    from ._retry import RetryPolicy
    from ._selection import Selection, build_selection

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
