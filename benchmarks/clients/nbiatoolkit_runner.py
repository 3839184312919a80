"""nbiatoolkit (PyPI), pointed at the simulator, measured in its own process (its own venv: it
pins pydicom < 3, tcia-mirror needs pydicom >= 3).

    nbiatoolkit_runner.py download ROOT SERIES_FILE OUT PROCESSES

The seams: ``NBIAClient.base_url`` (a setter; anything with ``.value``, as the download helper
does ``base_url.value + "v2/getImageWithMD5Hash"``) and ``OAuth2.base_url`` (a plain attribute;
the token is posted to ``base_url + "oauth/token"``; the simulator accepts ``nbia_guest`` with any
password). ``downloadSeries`` runs a multiprocessing pool of PROCESSES workers, each holding one
ZIP in memory, checking md5hashes.csv and sorting the files by their DICOM tags. The client is
not used as a context manager: its ``__exit__`` logs out at the real archive's URL.
"""

from __future__ import annotations

import logging
import sys

from _common import Measured, emit, loopback_only, read_uids


class SimBaseUrl:
    """Stands in for the ``NBIA_BASE_URLS`` enum member (picklable for the worker pool)."""

    def __init__(self, value: str) -> None:
        self.value = value


def main(argv: list[str]) -> None:
    from nbiatoolkit import NBIAClient

    root, uids, out, processes = argv[1], read_uids(argv[2]), argv[3], int(argv[4])
    services = f"{root}/nbia-api/services/"
    client = NBIAClient(log_level="WARNING")
    client.OAuth_client.base_url = services
    client.base_url = SimBaseUrl(services)  # type: ignore[assignment]
    logging.getLogger().setLevel(logging.WARNING)
    with Measured() as m:
        ok = client.downloadSeries(uids, downloadDir=out, nParallel=processes)
    emit(exit=0 if ok else 1, **m.result())


if __name__ == "__main__":
    loopback_only()
    main(sys.argv[1:])
