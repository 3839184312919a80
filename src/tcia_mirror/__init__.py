"""tcia-mirror: asynchronous, resumable, verified bulk downloader for The Cancer Imaging Archive.

Blocking helpers for scripts and notebooks::

    import tcia_mirror as tm
    report = tm.download("mirror/", collection="LIDC-IDRI", modality="CT")
    print(report.summary()); tm.verify("mirror/").ok

Async code uses :class:`Mirror` and :class:`ArchiveClient` directly.
"""

from __future__ import annotations

__version__ = "0.1.0"

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
