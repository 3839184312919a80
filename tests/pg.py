"""A throwaway PostgreSQL cluster for tests: initdb as the ``postgres`` user (initdb refuses
root), started on a free loopback port in a temp folder, removed at the end of the session.

The binaries are found through ``pg_config --bindir`` or Debian's known paths; a machine
without them skips the PostgreSQL tests with one line (:data:`MISSING`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def bindir() -> Path | None:
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for d in candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


def _missing() -> str | None:
    if bindir() is None:
        return "PostgreSQL binaries not found (pg_config --bindir, /usr/lib/postgresql/*/bin)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    return None


MISSING = _missing()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, port: int, user: str) -> None:
        self.port = port
        self.user = user
        self.admin_url = f"postgresql://{user}@127.0.0.1:{port}/postgres"

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg  # noqa: PLC0415

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def cluster(*, durable: bool = False, settings: str = "") -> Iterator[Cluster]:
    """A throwaway cluster; ``durable``: PostgreSQL's default fsync and commit settings (the
    benchmark), else fsync, synchronous_commit and full_page_writes off (tests); ``settings``:
    more ``-c name=value`` server options."""
    bins = bindir()
    assert bins is not None, MISSING
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else pwd.getpwuid(os.geteuid()).pw_name
    base = Path(tempfile.mkdtemp(prefix="tcia-pg-"))
    data = base / "data"
    if as_root:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    base.chmod(0o700)
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    port = _free_port()
    try:
        subprocess.run(
            [*run_as, str(bins / "initdb"), "-D", str(data), "-U", user, "-A", "trust",
             "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True,
        )  # fmt: skip
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} "
            "-c max_connections=200"
        )
        if not durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if settings:
            opts += f" {settings}"
        subprocess.run(
            [*run_as, str(bins / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
             str(base / "log"), "-w", "start"],
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            yield Cluster(port, user)
        finally:
            subprocess.run(
                [*run_as, str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]
else:

    @pytest.fixture(scope="session")
    def pg_cluster() -> Iterator[Cluster]:
        """The session's PostgreSQL cluster (import this fixture into a conftest or module)."""
        if MISSING:
            pytest.skip(f"PostgreSQL tests skipped: {MISSING}")
        with cluster() as c:
            yield c
