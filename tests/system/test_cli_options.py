"""One set of connection options for every command; ``verify --remote``; no secret ever echoed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import SimInThread
from tcia_mirror.cli.main import argv_secrets, run
from tcia_mirror.errors import redact
from tcia_mirror.sources.nbia.archive_check import compare_series
from tcia_mirror.sources.nbia.models import SeriesSize
from tcia_mirror.store.sqlite import SeriesState
from tcia_mirror.testing.simulator import Faults, Simulator

KEY, PW, URL_PW, PG_PW, ENV_KEY = (
    "key-s3cr3t-111",
    "pw-s3cr3t-222",
    "url-s3cr3t-333",
    "pg-s3cr3t-444",
    "env-s3cr3t-555",
)
SECRETS = (KEY, PW, URL_PW, PG_PW, ENV_KEY)
UNREACHABLE = "http://127.0.0.1:9/nbia-api/services/v4"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TCIA_")}
    return subprocess.run(
        [sys.executable, "-m", "tcia_mirror", *args],
        capture_output=True,
        text=True,
        env={**full_env, **(env or {})},
        timeout=120,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tcia-mirror"), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with SimInThread() as s:
        yield s


@pytest.fixture
def mirror(sim: Simulator, tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A complete two-series mirror of the simulator (faults reset after the test)."""
    uids = [s.series_uid for s in sim.dataset.series[:2]]
    out = tmp_path / "m"
    args = ["download", "--out", str(out), "--base-url", sim.base_url("nbia-v4"), "--no-progress"]
    for uid in uids:
        args += ["--series", uid]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    yield out, uids
    sim.faults = Faults()


def connection_options(sim: Simulator, tmp_path: Path) -> list[str]:
    config = tmp_path / "tcia.toml"
    config.write_text("retries = 3\n")
    return [
        "--api",
        "nbia-v4",
        "--base-url",
        sim.base_url("nbia-v4"),
        "--api-key",
        KEY,
        "--user",
        "someone",
        "--password",
        PW,
        "--token-url",
        "http://127.0.0.1:9/oauth/token",
        "--retries",
        "2",
        "--config",
        str(config),
    ]


# -- 1. verify and status take the connection options ------------------------------------------
def test_verify_and_status_accept_connection_options(
    sim: Simulator, mirror: tuple[Path, list[str]], tmp_path: Path
) -> None:
    out, _ = mirror
    conn = connection_options(sim, tmp_path)
    st = cli("status", "--out", str(out), "--json", *conn)
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["series"]["complete"] == 2
    v = cli("verify", "--out", str(out), *conn)
    assert v.returncode == 0, v.stderr
    assert "2 series checked, ok" in v.stdout
    # the cron form: --opt=value, options before --out
    eq = [f"--base-url={sim.base_url('nbia-v4')}", f"--api-key={KEY}", "--retries=2"]
    assert cli("verify", *eq, "--out", str(out), "--quick").returncode == 0
    assert cli("status", *eq, "--out", str(out)).returncode == 0
    # an unchanged archive: --remote finds nothing either
    r = cli("verify", "--out", str(out), "--remote", "--json", *conn)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True


def test_status_ignores_connection_options(mirror: tuple[Path, list[str]]) -> None:
    out, _ = mirror
    # status never talks to the archive: an unreachable one and a bad profile do not matter
    st = cli("status", "--out", str(out), "--base-url", UNREACHABLE, "--api", "nbia-v9")
    assert st.returncode == 0, st.stderr
    assert st.stderr == ""


def test_verify_remote_names_the_series_the_archive_changed(
    sim: Simulator, mirror: tuple[Path, list[str]]
) -> None:
    out, (changed, same) = mirror
    sim.faults = Faults(size_mismatch_series=frozenset({changed}))
    local = cli("verify", "--out", str(out), "--json")
    assert local.returncode == 0, local.stdout  # without --remote: disk only, as before
    assert "archive_changed" not in local.stdout
    # the mirror recorded its base URL: --remote needs only --out
    remote = cli("verify", "--out", str(out), "--remote", "--json")
    assert remote.returncode == 1, remote.stderr
    problems = json.loads(remote.stdout)["problems"]
    assert [(p["series"], p["kind"]) for p in problems] == [(changed, "archive_changed")]
    p = problems[0]
    assert p["found"]["count"] == p["expected"]["count"] + 1
    assert p["found"]["bytes"] == p["expected"]["bytes"] + 1000
    assert same not in remote.stdout
    text = cli("verify", "--out", str(out), "--remote")
    assert text.returncode == 1
    assert f"series {changed}: archive_changed" in text.stdout
    assert f"tcia-mirror sync --out {out}" in text.stdout
    # the local files are still whole: archive_changed does not send the series back to resume
    st = json.loads(cli("status", "--out", str(out), "--json").stdout)
    assert st["series"]["complete"] == 2


def test_verify_remote_unreachable_exits_3(mirror: tuple[Path, list[str]]) -> None:
    out, _ = mirror
    url = f"http://user:{URL_PW}@127.0.0.1:9/nbia-api/services/v4"
    proc = cli("verify", "--out", str(out), "--remote", "--base-url", url, "--retries", "2")
    line = one_line_error(proc, 3)
    assert URL_PW not in line
    # nothing was changed: verify stopped before checking the disk
    assert cli("status", "--out", str(out)).returncode == 0


def test_compare_series_count_bytes_sops_and_gone() -> None:
    state = SeriesState("1.2", None, None, None, 3, 300, {}, "complete", 1, None, "d", 3, 300, 3)
    local = {"a", "b", "c"}
    assert compare_series(state, SeriesSize(300, 3), ["a", "b", "c"], local) is None
    assert compare_series(state, SeriesSize(None, None), None, local) is None  # no evidence
    swapped = compare_series(state, SeriesSize(300, 3), ["a", "b", "d"], local)
    assert swapped is not None and swapped["kind"] == "archive_changed"
    assert (swapped["sop_added"], swapped["sop_removed"]) == (1, 1)
    grown = compare_series(state, SeriesSize(400, 4), ["a", "b", "c", "d"], local)
    assert grown is not None
    assert grown["expected"] == {"count": 3, "bytes": 300, "sop_uids": 3}
    assert grown["found"] == {"count": 4, "bytes": 400, "sop_uids": 4}
    gone = compare_series(state, SeriesSize(None, None), [], local)
    assert gone is not None and gone["found"] is None


# -- 2. usage errors never echo a secret -------------------------------------------------------
SUBCOMMANDS = {
    "query": ["query", "getSeries"],
    "plan": ["plan", "--collection", "X", "--out", "o"],
    "download": ["download", "--collection", "X", "--out", "o"],
    "resume": ["resume", "--out", "o"],
    "verify": ["verify", "--out", "o"],
    "status": ["status", "--out", "o"],
    "sync": ["sync", "--out", "o"],
    "demo": ["demo"],
    "simulate": ["simulate"],
}
SECRET_ARGS = {
    "separate": [
        "--api-key",
        KEY,
        "--password",
        PW,
        "--base-url",
        f"https://u:{URL_PW}@archive.example/v4",
        "--bogus",
        f"postgresql://u:{PG_PW}@db.example/tcia",
        ENV_KEY,
    ],
    "equals": [
        f"--api-key={KEY}",
        f"--password={PW}",
        f"--base-url=https://u:{URL_PW}@archive.example/v4",
        f"--bogus=postgresql://u:{PG_PW}@db.example/tcia",
        ENV_KEY,
    ],
    "prefixes": [
        f"--api-k={KEY}",
        "--pass",
        PW,
        f"--bogus=https://u:{URL_PW}@h",
        f"--passwd={PG_PW}",
        ENV_KEY,
    ],
}


@pytest.mark.parametrize("form", sorted(SECRET_ARGS))
@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_usage_errors_redact_secrets(
    command: str, form: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TCIA_API_KEY", ENV_KEY)
    monkeypatch.setenv("TCIA_PASSWORD", "env-pw-666")
    with pytest.raises(SystemExit) as exc:
        run([*SUBCOMMANDS[command], *SECRET_ARGS[form], "env-pw-666"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "unrecognized arguments" in err or "ambiguous option" in err, err
    assert "***" in err
    for secret in (*SECRETS, "env-pw-666"):
        assert secret not in err + captured.out, (secret, err)


def test_usage_error_in_a_real_process_redacts_secrets() -> None:
    for argv in (
        ["download", "--collection", "X", "--out", "o", *SECRET_ARGS["separate"]],
        ["simulate", *SECRET_ARGS["equals"]],
    ):
        proc = cli(*argv, env={"TCIA_API_KEY": ENV_KEY})
        line = one_line_error(proc, 2)
        assert "unrecognized arguments" in line
        for secret in SECRETS:
            assert secret not in proc.stderr + proc.stdout, (secret, proc.stderr)


def test_other_errors_redact_url_passwords() -> None:
    # not a usage error: the settings refuse the URL, and the message quotes it
    proc = cli("query", "getSeries", "--base-url", f"ftp://u:{URL_PW}@h/x")
    line = one_line_error(proc, 2)
    assert "--base-url" in line and URL_PW not in line


def test_redact_and_argv_scan() -> None:
    assert redact(f"postgresql://u:{PW}@h/db", []) == "postgresql://u:***@h/db"
    assert redact(f"see https://u:{PW}@h and x", []) == "see https://u:***@h and x"
    assert redact("http://host:8080/path me@example.com", []) == (
        "http://host:8080/path me@example.com"
    )
    assert redact(f"key {KEY}", [KEY]) == "key ***"  # as before
    found = argv_secrets(
        [
            "--api-key",
            KEY,
            f"--password={PW}",
            "--api",
            "nbia-v4",
            f"--base-url=http://u:{URL_PW}@h",
        ]
    )
    assert set(found) >= {KEY, PW, URL_PW}
    assert "nbia-v4" not in found


def test_a_password_in_the_base_url_is_never_recorded(tmp_path: Path) -> None:
    from tcia_mirror.engine.mirror import _without_password

    assert _without_password("https://u:s3cretpw@h:8080/x?y=1") == "https://u@h:8080/x?y=1"
    assert _without_password("https://h/x") == "https://h/x"
