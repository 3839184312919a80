"""kill -9 and resume (issues 3 and 5): real subprocesses of the CLI against a faulty simulator.

What is asserted about refetches. A committed instance is one the state store records as done
(read from a copy of the store after every kill). From the moment it is first seen committed:

* it is never requested again with ``getSingleImage`` (the simulator's request counter);
* its file is never rewritten (same inode and mtime at the end), even when its series' ZIP is
  fetched again, because the engine skips ZIP entries that are already committed;
* a ZIP carries the whole series, so a partly fetched series may legitimately be fetched again
  as a ZIP: the engine does so only while that is cheaper than one request per missing instance
  (``Mirror._jobs_for``). Once the store shows a series past that point, no further ZIP of it
  may be requested: the rest must come as single images.

A file renamed into place whose commit was not yet recorded when the process died counts as
committed from the moment it is seen under its final name: the next run adopts it (see
``tests/integration/test_adopt_on_resume.py``), so it is never fetched again with ``getSingleImage`` nor
rewritten either.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from reliability_kit import (
    SimThread,
    assert_final_files_correct,
    assert_no_refetch,
    cli_argv,
    crash_cycles,
    final_dicom_files,
    integrity_check,
    part_files,
    resume_until_done,
    run_cli,
    startup_seconds,
    truth_by_sop,
    wait_for,
)
from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults

COLLECTION = "SIM-LUNG-CT"


def crash_dataset(seed: int = 7) -> Dataset:
    # 6 series of 10-16 instances of 32 KB: about 2.6 MB, a few seconds at the capped bandwidth
    return Dataset(
        DatasetSpec(
            name="crash",
            collections=(COLLECTION,),
            patients=(4,),
            series_per_study=(2, 2),
            instances_per_series=(10, 16),
            rows=256,
            cols=256,
            seed=seed,
        )
    )


@pytest.mark.slow
def test_kill_9_cycles_then_resume_is_byte_identical_and_refetches_nothing(tmp_path: Path) -> None:
    faults = Faults(
        drop_rate=0.1,
        error_rate=0.08,
        truncate_rate=0.1,
        latency=0.005,
        bandwidth=200_000,
        seed=3,
    )
    with SimThread(crash_dataset(), faults=faults) as st:
        out = tmp_path / "mirror"
        truth = truth_by_sop(st.sim.dataset)
        boot = startup_seconds()
        t0 = time.monotonic()
        log = crash_cycles(
            st,
            out,
            ["--collection", COLLECTION, "--concurrency", "4"],
            truth,
            kills=10,
            seed=11,
            window=(boot, boot + 1.4),  # seconds, counted after the start-up time
        )
        assert log.kills >= 10, log
        assert sum(log.committed_at_kill) > 0, "no kill happened after something was committed"
        assert len(set(log.committed_at_kill)) >= 3, log.committed_at_kill  # kills at many points
        proc = resume_until_done(st, out, truth, log)
        assert "series complete" in proc.stdout
        # the mirror is the archive, byte for byte; nothing else is there
        files = final_dicom_files(out)
        assert set(files) == set(truth)
        assert assert_final_files_correct(out, truth) == len(truth)
        assert part_files(out) == []
        assert integrity_check(out) == "ok"
        checked, switched = assert_no_refetch(st, out, log)
        assert checked > 0
        verify = run_cli(cli_argv("verify", "--out", str(out), "--json"))
        assert verify.returncode == 0, verify.stdout
        injected = st.faults_injected()
        assert sum(injected.values()) > 0, injected
        print(
            f"crash cycles: {log.cycles} runs, {log.kills} kills, {log.resumes_to_finish} "
            f"resume(s) to finish, {checked} committed files never refetched, {switched} "
            f"series switched to single images, faults {injected}, "
            f"{time.monotonic() - t0:.1f} s"
        )


def test_second_process_on_one_mirror_exits_2_with_one_line(tmp_path: Path) -> None:
    with SimThread(crash_dataset(), faults=Faults(bandwidth=50_000)) as st:
        out = tmp_path / "mirror"
        first = subprocess.Popen(
            cli_argv(
                "download", "--collection", COLLECTION, "--out", str(out),
                "--base-url", st.base_url(), "--no-progress",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            lock = out / ".tcia-mirror" / "lock"
            wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid))
            for argv in (
                ("resume", "--out", str(out), "--no-progress"),
                ("download", "--collection", COLLECTION, "--out", str(out), "--no-progress",
                 "--base-url", st.base_url()),
                ("verify", "--out", str(out)),
                ("sync", "--out", str(out), "--no-progress"),
            ):  # fmt: skip
                second = run_cli(cli_argv(*argv))
                assert second.returncode == 2, (argv, second.stdout, second.stderr)
                lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
                assert len(lines) == 1, second.stderr
                assert "another tcia-mirror process" in lines[0]
                assert f"pid {first.pid}" in lines[0]
                assert "Traceback" not in second.stderr
            assert first.poll() is None  # the first one was not disturbed
        finally:
            first.kill()
            first.wait()
        st.set_faults(Faults())
        done = run_cli(cli_argv("resume", "--out", str(out), "--no-progress"))
        assert done.returncode == 0, done.stderr
        assert_final_files_correct(out, truth_by_sop(st.sim.dataset))
        assert set(final_dicom_files(out)) == set(truth_by_sop(st.sim.dataset))


def test_killed_while_planning_then_resume_plans_again(tmp_path: Path) -> None:
    """The first run dies before its plan is recorded: `resume` must finish the job, not say
    "start with download" (the run was a download) nor mirror half a plan."""
    slow_plan = Faults(latency=30.0, endpoints=frozenset({"getSOPInstanceUIDs"}))
    with SimThread(crash_dataset(), faults=slow_plan) as st:
        out = tmp_path / "mirror"
        first = subprocess.Popen(
            cli_argv(
                "download", "--collection", COLLECTION, "--out", str(out),
                "--base-url", st.base_url(), "--no-progress",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: st.call(lambda: st.sim.stats["getSOPInstanceUIDs"]) > 0)
        finally:
            first.kill()
            first.wait()
        assert integrity_check(out) == "ok"
        st.set_faults(Faults())
        proc = run_cli(cli_argv("resume", "--out", str(out), "--no-progress"))
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        truth = truth_by_sop(st.sim.dataset)
        assert set(final_dicom_files(out)) == set(truth)
        assert_final_files_correct(out, truth)
