"""The simulated archive's content: collections, patients, studies, series and DICOM instances.

Everything is a pure function of a :class:`DatasetSpec` (and the ``add_patient`` calls made
afterwards): the same spec and seed give the same UIDs and byte-identical files.
"""

from __future__ import annotations

import datetime
import random
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from . import dicomgen

__all__ = ["Dataset", "DatasetSpec", "SimInstance", "SimSeries"]

PresetName = Literal["test", "demo", "bench"]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class _CollectionTraits:
    modality: str
    body_part: str
    manufacturer: str
    model: str
    license_name: str
    license_short: str
    license_uri: str
    site: str
    study_descriptions: tuple[str, ...]
    series_descriptions: tuple[str, ...]


_CC_BY_3 = (
    "Creative Commons Attribution 3.0 Unported License",
    "CC BY 3.0",
    "http://creativecommons.org/licenses/by/3.0/",
)
_CC_BY_4 = (
    "Creative Commons Attribution 4.0 International License",
    "CC BY 4.0",
    "https://creativecommons.org/licenses/by/4.0/",
)
_CT = _CollectionTraits(
    "CT", "CHEST", "SIM MEDICAL SYSTEMS", "SimScan 64", *_CC_BY_3, "Site-A",
    ("CT CHEST W/O CONTRAST", "CT CHEST ABD PELVIS W/ CONTRAST"),
    ("AXIAL 2.5mm", "LUNG 1.25mm", "MEDIASTINUM", "CORONAL MPR"),
)  # fmt: skip
_MR = _CollectionTraits(
    "MR", "BRAIN", "SIMULATED MR, INC.", "FieldStrength 3T", *_CC_BY_4, "Site-B",
    ("MRI BRAIN W/WO CONTRAST", "MR HEAD"),
    ("T1 AX", "T2 FLAIR", "DWI b1000", "T1 SAG +C"),
)  # fmt: skip
_KNOWN_TRAITS = {"SIM-LUNG-CT": _CT, "SIM-BRAIN-MR": _MR}

# The second series of every dataset carries this description: comma, quotes, unicode, slash.
AWKWARD_DESCRIPTION = 'AX T1 +C, "post" µ-β/δ'


def _traits(collection: str) -> _CollectionTraits:
    known = _KNOWN_TRAITS.get(collection.upper())
    if known is not None:
        return known
    return _MR if "MR" in collection.upper().split("-") else _CT


@dataclass(frozen=True, slots=True)
class SimInstance:
    sop_uid: str
    instance_number: int
    acquisition_number: int | None
    transfer_syntax: str = dicomgen.EXPLICIT_VR_LE


@dataclass(slots=True)
class SimSeries:
    collection: str
    patient_id: str
    patient_name: str
    patient_sex: str
    study_uid: str
    study_date: datetime.date
    study_description: str
    series_uid: str
    modality: str
    body_part: str
    manufacturer: str
    manufacturer_model: str
    series_number: int
    series_description: str
    date_released: datetime.date
    license_name: str
    license_uri: str
    instances: list[SimInstance] = field(default_factory=list)
    # Extra attributes the endpoints report (defaults are fine for hand-made series).
    license_short_name: str = "CC BY 4.0"
    collection_uri: str = ""
    site: str = "Site-A"
    study_id: str = "1"
    patient_age: str = "058Y"
    software_versions: str = "1.0"
    protocol_name: str | None = None
    frame_of_reference_uid: str = ""
    released_time: datetime.time = datetime.time(17, 12, 21)

    @property
    def released_at(self) -> datetime.datetime:
        return datetime.datetime.combine(self.date_released, self.released_time)


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """What to generate. Ranges are inclusive ``(low, high)`` pairs drawn with the seeded RNG."""

    name: str = "custom"
    collections: tuple[str, ...] = ("SIM-LUNG-CT", "SIM-BRAIN-MR")
    patients: tuple[int, ...] = (2, 1)  # patients per collection, aligned with ``collections``
    studies_per_patient: tuple[int, int] = (1, 1)
    series_per_study: tuple[int, int] = (2, 2)
    instances_per_series: tuple[int, int] = (2, 5)
    rows: int = 16
    cols: int = 16
    seed: int = 0
    first_release: datetime.date = datetime.date(2015, 5, 27)
    shared_list: str = "sim-shared-1"

    def __post_init__(self) -> None:
        if len(self.patients) != len(self.collections):
            raise ValueError("DatasetSpec.patients must give one count per collection")
        if self.seed < 0:
            raise ValueError("DatasetSpec.seed must be >= 0 (it becomes a UID component)")
        for low, high in (self.studies_per_patient, self.series_per_study):
            if not 1 <= low <= high:
                raise ValueError("ranges must satisfy 1 <= low <= high")
        if not 1 <= self.instances_per_series[0] <= self.instances_per_series[1]:
            raise ValueError("instances_per_series must satisfy 1 <= low <= high")

    @classmethod
    def preset(cls, name: PresetName, seed: int = 0) -> DatasetSpec:
        """``test``: 3 patients, 6 series of 2-5 16x16 instances (about 40 KB in all).
        ``demo``: 4 patients, 8-12 series of 10-20 128x128 instances (a few MB).
        ``bench``: 4 patients, 8 series x 80 CT-sized 512x512 instances (about 336 MB).
        """
        if name == "test":
            return cls(name="test", seed=seed)
        if name == "demo":
            return cls(
                name="demo",
                patients=(2, 2),
                series_per_study=(2, 3),
                instances_per_series=(10, 20),
                rows=128,
                cols=128,
                seed=seed,
            )
        if name == "bench":
            return cls(
                name="bench",
                collections=("SIM-LUNG-CT",),
                patients=(4,),
                series_per_study=(2, 2),
                instances_per_series=(80, 80),
                rows=512,
                cols=512,
                seed=seed,
            )
        raise ValueError(f"unknown preset {name!r}; expected 'test', 'demo' or 'bench'")


class ByteLRU(Generic[K, V]):
    """A least-recently-used cache bounded by the total size of its values."""

    def __init__(self, budget: int, size_of: Callable[[V], int]) -> None:
        self.budget = budget
        self._size_of = size_of
        self._items: OrderedDict[K, V] = OrderedDict()
        self.size = 0

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        nbytes = self._size_of(value)
        if nbytes > self.budget:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= self._size_of(old)
        self._items[key] = value
        self.size += nbytes
        while self.size > self.budget:
            _, evicted = self._items.popitem(last=False)
            self.size -= self._size_of(evicted)


class Dataset:
    """Deterministic archive content built from a :class:`DatasetSpec`."""

    def __init__(self, spec: DatasetSpec, *, cache_bytes: int = 64 * 2**20) -> None:
        self.spec = spec
        self.series: list[SimSeries] = []
        self.shared_lists: dict[str, list[str]] = {}
        self._by_uid: dict[str, SimSeries] = {}
        self._sop_index: dict[tuple[str, str], int] = {}
        self._headers: dict[tuple[str, str], bytes] = {}
        self._encapsulated_sizes: dict[tuple[str, str], int] = {}  # PixelData element lengths
        pools_budget = max(64 * 2**20, 8 * dicomgen.pixel_length(spec.rows, spec.cols))
        self._pools: ByteLRU[str, bytes] = ByteLRU(pools_budget, len)
        self._files: ByteLRU[tuple[str, str], bytes] = ByteLRU(cache_bytes, len)
        self._study_counter = 0
        self._series_counter = 0
        self._patient_counter = 0
        self._patients_in: dict[str, int] = {}
        rng = random.Random(f"tcia-mirror-sim:{spec.seed}")
        for c_index, (collection, n_patients) in enumerate(
            zip(spec.collections, spec.patients, strict=True)
        ):
            for p_index in range(n_patients):
                released = spec.first_release + datetime.timedelta(days=400 * c_index + 7 * p_index)
                self._new_patient(collection, released, rng, n_series=None)
        self.shared_lists[spec.shared_list] = [s.series_uid for s in self.series[::2]]

    # ----------------------------------------------------------------- building
    def _uid(self, kind: int, *parts: int) -> str:
        return ".".join([dicomgen.UID_ROOT, str(self.spec.seed), str(kind), *map(str, parts)])

    def _new_patient(
        self,
        collection: str,
        released: datetime.date,
        rng: random.Random,
        *,
        n_series: int | None,
    ) -> list[SimSeries]:
        spec = self.spec
        traits = _traits(collection)
        self._patient_counter += 1
        number = self._patients_in.get(collection.upper(), 0) + 1
        self._patients_in[collection.upper()] = number
        prefix = collection.rsplit("-", 1)[0] if collection.count("-") >= 2 else collection
        # The third patient of a dataset has a space in its ID (clients must cope).
        sep = " " if self._patient_counter == 3 else "-"
        patient_id = f"{prefix}{sep}{number:04d}"
        sex = "F" if self._patient_counter % 2 == 0 else "M"
        age = f"{rng.randint(25, 85):03d}Y"
        studies = 1 if n_series is not None else rng.randint(*spec.studies_per_patient)
        made: list[SimSeries] = []
        for _ in range(studies):
            self._study_counter += 1
            study_uid = self._uid(1, self._study_counter)
            frame_uid = self._uid(4, self._study_counter)
            study_date = datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randint(0, 4500))
            study_description = rng.choice(traits.study_descriptions)
            count = n_series if n_series is not None else rng.randint(*spec.series_per_study)
            for s_index in range(count):
                self._series_counter += 1
                n = self._series_counter
                if n == 2:
                    description = AWKWARD_DESCRIPTION
                else:
                    description = traits.series_descriptions[
                        (n + s_index) % len(traits.series_descriptions)
                    ]
                series = SimSeries(
                    collection=collection,
                    patient_id=patient_id,
                    patient_name=patient_id.replace(" ", "^"),
                    patient_sex=sex,
                    study_uid=study_uid,
                    study_date=study_date,
                    study_description=study_description,
                    series_uid=self._uid(2, n),
                    modality=traits.modality,
                    body_part=traits.body_part,
                    manufacturer=traits.manufacturer,
                    manufacturer_model=traits.model,
                    series_number=s_index + 1,
                    series_description=description,
                    date_released=released,
                    license_name=traits.license_name,
                    license_uri=traits.license_uri,
                    license_short_name=traits.license_short,
                    collection_uri=f"https://doi.org/10.0000/SIM.{collection.upper()}",
                    site=traits.site,
                    study_id=str(self._study_counter),
                    patient_age=age,
                    software_versions=f"{rng.randint(1, 9)}.{rng.randint(0, 9)}",
                    protocol_name="ROUTINE" if n % 3 == 0 else None,
                    frame_of_reference_uid=frame_uid,
                    released_time=datetime.time(rng.randint(8, 19), rng.randint(0, 59), n % 60),
                )
                n_inst = rng.randint(*spec.instances_per_series)
                # Series 3 has two acquisitions (exercises NewFileNames=Yes naming).
                for i in range(1, n_inst + 1):
                    acquisition = 2 if (n == 3 and i > n_inst // 2) else 1
                    syntax = dicomgen.mixed_transfer_syntax(n, i)
                    series.instances.append(SimInstance(self._uid(3, n, i), i, acquisition, syntax))
                self._add_series(series)
                made.append(series)
        return made

    def _add_series(self, series: SimSeries) -> None:
        self.series.append(series)
        self._by_uid[series.series_uid] = series
        for index, inst in enumerate(series.instances):
            self._sop_index[(series.series_uid, inst.sop_uid)] = index

    def add_patient(
        self, collection: str, *, released: datetime.date, n_series: int = 1
    ) -> list[SimSeries]:
        """Add a patient (one study, ``n_series`` series) released on ``released``.

        Safe to call while a :class:`Simulator` serves this dataset (same event loop thread).
        """
        if n_series < 1:
            raise ValueError("n_series must be >= 1")
        rng = random.Random(f"tcia-mirror-sim:{self.spec.seed}:add:{self._patient_counter}")
        return self._new_patient(collection, released, rng, n_series=n_series)

    # ------------------------------------------------------------------ lookups
    def get_series(self, series_uid: str) -> SimSeries | None:
        return self._by_uid.get(series_uid)

    def find_instance(self, series_uid: str, sop_uid: str) -> SimInstance | None:
        index = self._sop_index.get((series_uid, sop_uid))
        return None if index is None else self._by_uid[series_uid].instances[index]

    def collections(self) -> list[str]:
        return sorted({s.collection for s in self.series}, key=str.upper)

    # -------------------------------------------------------------------- bytes
    def _require(self, series_uid: str, sop_uid: str) -> tuple[SimSeries, SimInstance, int]:
        index = self._sop_index.get((series_uid, sop_uid))
        if index is None:
            raise KeyError(f"no instance {sop_uid!r} in series {series_uid!r}")
        series = self._by_uid[series_uid]
        return series, series.instances[index], index

    def _header(self, series: SimSeries, inst: SimInstance) -> bytes:
        key = (series.series_uid, inst.sop_uid)
        header = self._headers.get(key)
        if header is None:
            header = dicomgen.dicom_header(series, inst, self.spec.rows, self.spec.cols)
            self._headers[key] = header
        return header

    def _pool(self, series: SimSeries) -> bytes:
        pool = self._pools.get(series.series_uid)
        if pool is None:
            pool = dicomgen.pixel_pool(
                f"{self.spec.seed}:{series.series_uid}", self.spec.rows, self.spec.cols
            )
            self._pools.put(series.series_uid, pool)
        return pool

    def instance_bytes(self, series_uid: str, sop_uid: str) -> bytes:
        """The Part-10 file of one instance (KeyError if unknown). Cached, LRU bounded by bytes."""
        cached = self._files.get((series_uid, sop_uid))
        if cached is not None:
            return cached
        series, inst, index = self._require(series_uid, sop_uid)
        pixels = dicomgen.pixel_window(self._pool(series), index, self.spec.rows, self.spec.cols)
        element = dicomgen.pixel_element(pixels, inst.transfer_syntax, cols=self.spec.cols)
        if dicomgen.is_encapsulated(inst.transfer_syntax):
            self._encapsulated_sizes[(series_uid, sop_uid)] = len(element)
        data = self._header(series, inst) + element
        self._files.put((series_uid, sop_uid), data)
        return data

    def instance_size(self, series_uid: str, sop_uid: str) -> int:
        series, inst, _ = self._require(series_uid, sop_uid)
        if dicomgen.is_encapsulated(inst.transfer_syntax):
            element = self._encapsulated_sizes.get((series_uid, sop_uid))
            if element is None:  # compressed size depends on the pixels: build the file once
                return len(self.instance_bytes(series_uid, sop_uid))
        else:
            element = dicomgen.pixel_element_length(
                self.spec.rows, self.spec.cols, inst.transfer_syntax
            )
        return len(self._header(series, inst)) + element

    def series_size(self, series_uid: str) -> tuple[int, int]:
        """(total bytes, object count) of the series' DICOM files; KeyError if unknown."""
        series = self._by_uid[series_uid]
        total = sum(self.instance_size(series_uid, i.sop_uid) for i in series.instances)
        return total, len(series.instances)

    def ground_truth(self) -> dict[str, dict[str, bytes]]:
        """series UID -> SOP UID -> file bytes, for byte-identical checks (all in memory)."""
        return {
            s.series_uid: {
                i.sop_uid: self.instance_bytes(s.series_uid, i.sop_uid) for i in s.instances
            }
            for s in self.series
        }

    def total_bytes(self) -> int:
        return sum(self.series_size(s.series_uid)[0] for s in self.series)
