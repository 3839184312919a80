"""The soak (``make soak``, not part of ``make test``): many kill -9 cycles under mixed faults.

Rounds of: a fresh mirror of CT-sized data (512x512 instances, like the bench preset) fetched
by ``tcia-mirror download``/``resume`` subprocesses that are SIGKILLed after seeded random
delays while the simulator drops connections, truncates ZIPs, answers 5xx, 429 and HTML pages;
then resumed to the end, verified byte for byte against the simulator's ground truth, checked
for refetches of committed files, and synced once after the archive released a new patient.
Rounds repeat until ``--kills`` kills happened. The invariants of ``reliability_kit.observe``
are checked after every single run. Prints a summary; exit status 1 if anything failed.

    .venv/bin/python tests/soak.py [--kills 50] [--seed 1] [--instances 40]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from reliability_kit import (  # noqa: E402
    CrashLog,
    SimThread,
    assert_final_files_correct,
    assert_no_refetch,
    cli_argv,
    crash_cycles,
    final_dicom_files,
    integrity_check,
    part_files,
    read_store,
    resume_until_done,
    run_cli,
    truth_by_sop,
)
from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults  # noqa: E402

COLLECTION = "SIM-LUNG-CT"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=50, help="kill -9 cycles in all (default 50)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--patients", type=int, default=4, help="2 series each")
    p.add_argument("--instances", type=int, default=40, help="per series (bench: 80)")
    p.add_argument("--size", type=int, default=512, help="rows = cols of each image")
    p.add_argument("--bandwidth", type=float, default=1.5e6, help="bytes/s per response")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--window", type=float, nargs=2, default=(0.8, 3.0), metavar=("MIN", "MAX"),
                   help="seconds before the kill, drawn uniformly")  # fmt: skip
    return p.parse_args(argv)


def soak_faults(seed: int, bandwidth: float) -> Faults:
    return Faults(
        drop_rate=0.05,
        error_rate=0.04,
        truncate_rate=0.05,
        html_error_rate=0.03,
        rate_limit_rate=0.03,
        retry_after=0.2,
        latency=0.003,
        bandwidth=bandwidth,
        seed=seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # killed clients are expected
    spec = DatasetSpec(
        name="soak",
        collections=(COLLECTION,),
        patients=(args.patients,),
        series_per_study=(2, 2),
        instances_per_series=(args.instances, args.instances),
        rows=args.size,
        cols=args.size,
        seed=args.seed,
    )
    dataset = Dataset(spec)
    t0 = time.monotonic()
    totals = {"runs": 0, "kills": 0, "resumes": 0, "rounds": 0, "verified": 0, "kept": 0,
              "lost": 0, "synced": 0, "switched": 0}  # fmt: skip
    failures: list[str] = []
    selection = ["--collection", COLLECTION, "--concurrency", str(args.concurrency)]
    print(
        f"soak: {len(dataset.series)} series x {args.instances} instances of "
        f"{args.size}x{args.size} ({dataset.total_bytes() / 1e6:.0f} MB), target "
        f"{args.kills} kills, kill window {args.window[0]}-{args.window[1]} s",
        flush=True,
    )
    with SimThread(dataset, faults=soak_faults(args.seed, args.bandwidth)) as st:
        with tempfile.TemporaryDirectory(prefix="tcia-soak-") as tmp:
            while totals["kills"] < args.kills and not failures:
                totals["rounds"] += 1
                out = Path(tmp) / f"round-{totals['rounds']}"
                truth = truth_by_sop(dataset)
                log = CrashLog()
                try:
                    log = crash_cycles(
                        st, out, selection, truth,
                        kills=args.kills - totals["kills"],
                        seed=args.seed * 1000 + totals["rounds"],
                        window=tuple(args.window),  # type: ignore[arg-type]
                        max_cycles=3 * args.kills,
                        on_cycle=lambda n, what: print(f"  run {n}: {what}", flush=True),
                    )  # fmt: skip
                    resume_until_done(st, out, truth, log)
                    files = final_dicom_files(out)
                    assert set(files) == set(truth), "the mirror differs from the archive"
                    totals["verified"] += assert_final_files_correct(out, truth)
                    assert part_files(out) == [], "temp files left"
                    assert integrity_check(out) == "ok"
                    kept, switched = assert_no_refetch(st, out, log)
                    totals["kept"] += kept
                    totals["switched"] += switched
                    verify = run_cli(cli_argv("verify", "--out", str(out), "--json"))
                    assert verify.returncode == 0, verify.stdout[-2000:]
                    # the archive releases a patient; sync fetches exactly it, faults still on
                    new = st.call(
                        lambda: dataset.add_patient(
                            COLLECTION, released=datetime.date.today(), n_series=1
                        )
                    )
                    before = set(files)
                    for _ in range(5):
                        sync = run_cli(cli_argv("sync", "--out", str(out), "--no-progress"))
                        if sync.returncode == 0:
                            break
                    assert sync.returncode == 0, sync.stdout + sync.stderr
                    truth = truth_by_sop(dataset)
                    assert_final_files_correct(out, truth)
                    added = set(final_dicom_files(out)) - before
                    assert added == {i.sop_uid for i in new[0].instances}, "sync fetched wrong"
                    totals["synced"] += len(added)
                    totals["verified"] += len(added)
                except AssertionError as exc:
                    failures.append(f"round {totals['rounds']}: {exc}")
                finally:
                    totals["runs"] += log.cycles
                    totals["kills"] += log.kills
                    totals["resumes"] += log.resumes_to_finish
                    if (out / ".tcia-mirror" / "state.sqlite").exists():
                        snap = read_store(out)
                        present = set(final_dicom_files(out))
                        totals["lost"] += sum(
                            1 for sop in log.first_commit
                            if sop not in snap.committed or sop not in present
                        )  # fmt: skip
                print(
                    f"round {totals['rounds']}: {log.kills} kills in {log.cycles} runs, "
                    f"{log.resumes_to_finish} resume(s) to finish",
                    flush=True,
                )
            injected = st.faults_injected()
    seconds = time.monotonic() - t0
    faults = ", ".join(f"{k}={v}" for k, v in sorted(injected.items()))
    print()
    print(
        f"soak summary: {totals['kills']} kill -9 cycles ({totals['runs']} runs, "
        f"{totals['rounds']} rounds, {totals['resumes']} resumes to finish) in {seconds:.0f} s"
    )
    print(f"  faults injected by the archive: {sum(injected.values())} ({faults})")
    print(
        f"  files verified byte-identical: {totals['verified']} (incl. {totals['synced']} "
        f"from syncs); committed files never refetched: {totals['kept']}; series finished "
        f"with single images after a broken ZIP: {totals['switched']}"
    )
    print(f"  files lost: {totals['lost']}")
    for failure in failures:
        print(f"  FAILED {failure}")
    return 1 if failures or totals["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
