"""tcia_utils (PyPI ``tcia-utils``), pointed at the simulator, measured in its own process.

    tcia_utils_runner.py download ROOT SERIES_FILE OUT WORKERS   nbia.downloadSeries(max_workers=)
    tcia_utils_runner.py list ROOT COLLECTION                    nbia.getSeries(collection)

The seam: ``tcia_utils.nbia.setApiUrl(endpoint, api_url)`` builds every base URL (v4, and v1 for
``getContentsByName``); the module looks it up at call time, so replacing the module attribute
redirects ``downloadSeries`` (``base_url + "getImage?NewFileNames=Yes&SeriesInstanceUID=" + uid``).
"""

from __future__ import annotations

import logging
import sys

from _common import Measured, emit, loopback_only, read_uids


def point_at(root: str) -> object:
    from tcia_utils import nbia

    def set_api_url(endpoint: str, api_url: str = "nbia") -> str:
        version = "v1" if endpoint == "getContentsByName" else "v4"
        return f"{root}/nbia-api/services/{version}/"

    nbia.setApiUrl = set_api_url
    logging.getLogger("tcia_utils.nbia").setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    return nbia


def main(argv: list[str]) -> None:
    nbia: object = point_at(argv[1])
    if argv[0] == "list":
        with Measured() as m:
            rows = nbia.getSeries(collection=argv[2])  # type: ignore[attr-defined]
        emit(exit=0 if rows else 1, series=len(rows or []), **m.result())
        return
    uids, out, workers = read_uids(argv[2]), argv[3], int(argv[4])
    with Measured() as m:
        nbia.downloadSeries(uids, input_type="list", path=out, max_workers=workers)  # type: ignore[attr-defined]
    emit(exit=0, **m.result())


if __name__ == "__main__":
    loopback_only()
    main(sys.argv[1:])
