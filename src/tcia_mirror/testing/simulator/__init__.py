"""An in-process simulation of The Cancer Imaging Archive, for the demo, tests and benchmarks.

::

    dataset = Dataset(DatasetSpec.preset("test", seed=1))
    async with Simulator(dataset, faults=Faults(error_rate=0.2)) as sim:
        base = sim.base_url("nbia-v4")   # http://127.0.0.1:PORT/nbia-api/services/v4

Modules: ``dataset`` (content and DICOM bytes), ``dicomgen`` (Part-10 files), ``zipstream``
(streamed ZIPs), ``queries`` (endpoint parameters and rows), ``auth`` (tokens), ``faults`` and
``server`` (the aiohttp application).
"""

from __future__ import annotations

from .dataset import Dataset, DatasetSpec, SimInstance, SimSeries
from .faults import Faults
from .server import PROFILES, Simulator, serve

__all__ = [
    "PROFILES",
    "Dataset",
    "DatasetSpec",
    "Faults",
    "SimInstance",
    "SimSeries",
    "Simulator",
    "serve",
]
