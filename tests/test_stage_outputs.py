"""Stage outputs as JSON plus .npy folders: round trips, planted files, atomic replacement."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
import pytest
from numpy.typing import NDArray

from db.results import Prediction
from imaging.crop import ImageArea
from imaging.features import Location, Unavailable, ViewFeatures, extract_view
from imaging.scope_reasons import Exclusion, Reason
from models.risk_map import PopulationLocation
from models.scope import PartScore
from pipeline.contracts import (
    DeidentifiedImage,
    DeidentifiedStudy,
    ExcludedImage,
    InstanceRef,
    JobContext,
    ModelInputs,
    Skipped,
    StudyInput,
)
from pipeline.crop import CroppedStudy, CroppedView
from pipeline.features import MeasuredStudy, MeasuredView
from pipeline.graph import default_stages
from pipeline.infer import PredictedStudy
from pipeline.intake import (
    IntakeReport,
    ReportDocument,
    SeriesCount,
    UltrasoundImage,
)
from pipeline.report.inputs import ReportObject, ReportOptions
from pipeline.report.stage import ReportObjects
from pipeline.segment import SegmentedStudy, SegmentedView
from pipeline.shadow import ShadowAnswer, ShadowAnswers
from pipeline.spool import SpoolLayout
from pipeline.stage import Stage
from pipeline.stage_outputs import StageOutputError, load_output, save_output
from pipeline.stage_outputs.schema import DOCUMENT

Side = Literal["left", "right"]
HEAT_FILE = "1.npy"  # the first Spot's heat map: the second array written
Heat = NDArray[np.float32]


class Colour(enum.Enum):
    GREY = "grey"
    RGB = "rgb"


@dataclasses.dataclass(frozen=True)
class Gone:
    reason: str


@dataclasses.dataclass(frozen=True, eq=False)
class Spot:
    heat: Heat
    inside: NDArray[np.bool_]
    distance: float
    deepest: tuple[int, int]


@dataclasses.dataclass(frozen=True, eq=False)
class Finding:
    crop: NDArray[np.uint8]
    box: tuple[int, int, int, int]
    spot: Spot | Gone
    side: Side | Gone
    size_mm: float | None
    colour: Colour


@dataclasses.dataclass(frozen=True)
class Frame:
    png: Path
    spacing: tuple[float, float] | None
    finding: Finding | None


@dataclasses.dataclass(frozen=True)
class Sample:
    SCHEMA_VERSION: ClassVar[int] = 3

    job_id: int
    work_dir: Path
    frames: tuple[Frame, ...]
    notes: list[str]
    counts: dict[str, int]
    detail: dict[str, Any]
    score: float
    flags: tuple[bool, ...]


Inputs = TypeVar("Inputs")


@dataclasses.dataclass(frozen=True)
class Wrapped(Generic[Inputs]):
    SCHEMA_VERSION: ClassVar[int] = 1

    inputs: Inputs
    more: tuple[Inputs, ...]


def sample(root: Path) -> Sample:
    work = root / "work" / "job-7"
    heat = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    spot = Spot(heat, heat > 0.5, distance=math.nan, deepest=(2, 1))
    crop = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    return Sample(
        job_id=7,
        work_dir=work,
        frames=(
            Frame(
                work / "crop" / "000.png",
                (0.1, 0.1),
                Finding(crop, (0, 1, 4, 3), spot, "left", -math.inf, Colour.RGB),
            ),
            Frame(
                work / "crop" / "001.png",
                None,
                Finding(
                    crop[:0],
                    (0, 0, 0, 0),
                    Gone("no thyroid"),
                    Gone("not transverse"),
                    None,
                    Colour.GREY,
                ),
            ),
            Frame(work / "crop" / "002.png", None, None),
        ),
        notes=["first", "ünïcode \ud800"],
        counts={"X": 3, "Z": 0},
        detail={"reason": "test", "views": [{"n": 1, "x": 0.5, "ok": True, "none": None}]},
        score=math.inf,
        flags=(True, False),
    )


def assert_same(a: object, b: object, where: str = "value") -> None:
    """Equal trees: same types, arrays with dtype and shape, NaN equal to NaN."""
    assert type(a) is type(b), where
    if dataclasses.is_dataclass(a):
        for field in dataclasses.fields(a):
            assert_same(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, tuple | list):
        assert isinstance(b, tuple | list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


def read_document(directory: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((directory / DOCUMENT).read_text())
    return document


def write_document(directory: Path, document: dict[str, Any]) -> None:
    (directory / DOCUMENT).write_text(json.dumps(document))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A saved Sample in ``spool/work/job-7/stages/00-sample``."""
    root = tmp_path / "spool"
    directory = root / "work" / "job-7" / "stages" / "00-sample"
    save_output(directory, sample(root), root=root)
    return directory


def spool_of(directory: Path) -> Path:
    return directory.parents[3]


# --- round trips ---------------------------------------------------------------------


def test_a_representative_tree_round_trips(saved: Path) -> None:
    root = spool_of(saved)
    loaded = load_output(saved, Sample, root=root)
    assert_same(loaded, sample(root))
    assert sorted(p.name for p in saved.iterdir()) == ["0.npy", "1.npy", "2.npy", "3.npy", DOCUMENT]
    document = read_document(saved)
    assert (document["type"], document["schema_version"]) == ("Sample", 3)
    frame = document["value"]["frames"][0]
    assert frame["png"] == "work/job-7/crop/000.png"  # relative to the spool root
    assert frame["finding"]["spot"]["kind"] == "Spot"  # union members are tagged
    assert frame["finding"]["side"] == "left"
    assert frame["finding"]["size_mm"] == {"float": "-inf"}
    assert frame["finding"]["spot"]["value"]["heat"] == {
        "array": 1,
        "dtype": "<f4",
        "shape": [3, 4],
    }


def test_paths_are_read_under_the_readers_spool_root(saved: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "mounted" / "elsewhere"
    shutil.copytree(spool_of(saved), elsewhere)
    loaded = load_output(elsewhere / "work/job-7/stages/00-sample", Sample, root=elsewhere)
    assert loaded.work_dir == elsewhere / "work" / "job-7"
    assert loaded.frames[1].png == elsewhere / "work" / "job-7" / "crop" / "001.png"


def test_type_variables_are_bound_by_the_expected_type(tmp_path: Path) -> None:
    value = Wrapped(inputs=Gone("x"), more=(Gone("y"), Gone("z")))
    save_output(tmp_path / "out", value, root=tmp_path)
    assert load_output(tmp_path / "out", Wrapped[Gone], root=tmp_path) == value
    with pytest.raises(TypeError, match="inputs: type variable"):
        load_output(tmp_path / "out", Wrapped, root=tmp_path)


Third = Literal["upper", "middle", "lower"]


@dataclasses.dataclass(frozen=True)
class Choices:
    SCHEMA_VERSION: ClassVar[int] = 1

    place: Side | Third | Gone
    label: str | Side
    colour: Colour | None


def test_unions_of_literals_and_dataclasses_round_trip(tmp_path: Path) -> None:
    for value in (Choices("middle", "right", None), Choices(Gone("no view"), "free", Colour.RGB)):
        save_output(tmp_path / "out", value, root=tmp_path)
        assert load_output(tmp_path / "out", Choices, root=tmp_path) == value
    document = read_document(tmp_path / "out")
    assert document["value"] == {
        "place": {"kind": "Gone", "value": {"reason": "no view"}},
        "label": "free",
        "colour": "rgb",
    }
    document["value"]["place"] = "centre"
    write_document(tmp_path / "out", document)
    allowed = r"\('left', 'right', 'upper', 'middle', 'lower'\)"
    with pytest.raises(StageOutputError, match=f"place: value is not one of {allowed}"):
        load_output(tmp_path / "out", Choices, root=tmp_path)


def _masks() -> tuple[NDArray[np.uint8], NDArray[np.bool_], NDArray[np.bool_]]:
    rows, cols = np.mgrid[0:80, 0:100]
    thyroid = ((cols - 50) / 40.0) ** 2 + ((rows - 40) / 25.0) ** 2 <= 1.0
    nodule = (cols - 40) ** 2 + (rows - 35) ** 2 <= 64
    nodule |= (cols - 70) ** 2 + (rows - 45) ** 2 <= 9
    image = np.random.default_rng(1).integers(40, 200, size=(80, 100), dtype=np.uint8)
    return image, nodule, thyroid


def _view(work: Path, n: int, features: ViewFeatures) -> MeasuredView:
    area = ImageArea(10, 20, 110, 100, (0.1, 0.12) if features.calibrated else None, "regions")
    crop = CroppedView(f"2.25.{n}", work / "crop" / f"{n:03d}.png", area, 0, 80, 100, False, None)
    segment = work / "segment"
    segmented = SegmentedView(
        crop,
        segment / f"{n:03d}_nodule.png",
        work / "x.png",
        segment / "c.png",
        9,
        99,
        0.87,
        np.linspace(-1.0, 1.0, 8, dtype=np.float32),
        None if n else PartScore("texture", 3.25, 6.06),
    )
    population: PopulationLocation | Unavailable | None = (
        PopulationLocation(
            plane="transverse",
            side="right",
            position=(20.25, 17.5),
            pixel=(20, 18),
            region="lateral",
            risk=0.6412,
            paper_value=0.31,
            coverage=54.5,
            cases=480,
            dice=0.995,
            mse=0.0045,
            rate_map=np.linspace(0.0, 1.0, 56 * 72, dtype=np.float32).reshape(56, 72),
            template=np.eye(56, 72, dtype=bool),
        )
        if n == 0
        else Unavailable("the lobe's lateral edge is cut by the crop")
        if n == 1
        else None
    )
    return MeasuredView(segmented, features, None if features.index is None else 0.62, population)


def real_outputs(root: Path) -> dict[str, object]:
    """A real output of every stage, features extracted from a synthetic crop and masks."""
    work = root / "work" / "job-3"
    image, nodule, thyroid = _masks()
    located = extract_view(image, nodule, thyroid, (0.1, 0.12), view="transverse")
    unlocated = extract_view(image, nodule, np.zeros_like(thyroid), None, view="longitudinal")
    empty = extract_view(image, np.zeros_like(nodule), thyroid, None)
    assert located.index is not None and isinstance(located.index.location, Location)
    assert unlocated.index is not None and isinstance(unlocated.index.location, Unavailable)
    views = (_view(work, 0, located), _view(work, 1, unlocated), _view(work, 2, empty))
    crops = tuple(v.segmented.crop for v in views)
    skipped = (Skipped("2.25.4", "unreadable"),)
    excluded = (
        ExcludedImage("2.25.12", Exclusion(Reason.COLOUR_DOPPLER)),
        ExcludedImage("2.25.13", Exclusion(Reason.OUT_OF_DISTRIBUTION, "score 41.2 > 18.0")),
    )
    inputs = ModelInputs(age_years=51.5, sex="F", report_text="left lobe nodule")
    job = JobContext(3, work, inputs, "/srv/llnm/bundles/llnm-site-1.1-0123abcd")
    ref = InstanceRef("2.25.5", "1.2.840.10008.5.1.4.1.1.6.1", "2.25.6", root / "in" / "5.dcm")
    study = StudyInput(3, "2.25.7", (ref,), work, "/srv/llnm/bundles/llnm-site-1.1-0123abcd")
    prediction = Prediction(
        0.7, 0.5, True, 2, "demo", "1.0", "ab" * 32, True, True, {"texture": 41.5}
    )
    image_ref = DeidentifiedImage(work / "deid" / "1.dcm", "2.25.9", 1, 80, 100, True)
    sr = ReportObject(
        "sr",
        work / "report" / "sr.dcm",
        "1.2.840.10008.5.1.4.1.1.88.33",
        "2.25.8",
        "2.25.10",
        "LLNM",
    )
    return {
        "intake": IntakeReport(
            study=study,
            images=(
                UltrasoundImage(ref, 80, 100, 1, "MONOCHROME2", 8, "1.2.840.10008.1.2.1", True),
            ),
            reports=(ReportDocument(ref, "nodule"),),
            series=(SeriesCount("2.25.6", "US", 1),),
            skipped=(Skipped("2.25.11", "SOP class Basic Text SR"),),
            excluded=excluded,
        ),
        "deidentify": DeidentifiedStudy(job, "2.25.1", (image_ref,), excluded),
        "crop": CroppedStudy(job=job, images=crops, skipped=skipped, excluded=excluded),
        "segment": SegmentedStudy(
            job=job, views=tuple(v.segmented for v in views), skipped=skipped, excluded=excluded
        ),
        "features": MeasuredStudy(job=job, views=views, excluded=excluded),
        "infer": PredictedStudy(
            job,
            views[:2],
            prediction,
            (0.2, 0.5, 0.3),
            (work / "h.png",),
            None,
            "2.25.1234",
            {"location": 0.75, "report": -0.25},
            ood_scores=(3.5, 4.25),
            ood_threshold=12.0,
            excluded=excluded,
        ),
        "report": ReportObjects(job_id=3, caption="LLNM positive", objects=(sr,)),
        "shadow": ShadowAnswers(
            (
                ShadowAnswer(7, "predicted", prediction=prediction),
                ShadowAnswer(8, "not_assessed", "colour_doppler"),
                ShadowAnswer(9, "failed", error="BundleError: llnm/model.safetensors altered"),
            )
        ),
    }


STAGES = default_stages(
    Path("unused-bundle"),
    spool=SpoolLayout.at(Path("unused-spool")),
    report=ReportOptions(),
    destinations_for=lambda calling_ae: [],
)


@pytest.mark.parametrize("stage", STAGES, ids=[stage.name for stage in STAGES])
def test_every_stages_real_output_round_trips_as_its_declared_type(
    tmp_path: Path, stage: Stage[Any, Any]
) -> None:
    value = real_outputs(tmp_path)[stage.name]
    assert stage.output_type is not None
    save_output(tmp_path / "out", value, root=tmp_path)
    assert_same(load_output(tmp_path / "out", stage.output_type, root=tmp_path), value)


# --- what saving refuses -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Unversioned:
    job_id: int


@dataclasses.dataclass(frozen=True)
class WithSet:
    SCHEMA_VERSION: ClassVar[int] = 1
    uids: set[str]


@dataclasses.dataclass(frozen=True)
class Ambiguous:
    SCHEMA_VERSION: ClassVar[int] = 1
    value: int | str


@dataclasses.dataclass(frozen=True)
class Counted:
    SCHEMA_VERSION: ClassVar[int] = 1
    count: int
    where: Path


def test_saving_refuses_what_it_cannot_write_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(TypeError, match="SCHEMA_VERSION"):
        save_output(out, Unversioned(1), root=tmp_path)
    with pytest.raises(TypeError, match="uids: annotation"):
        save_output(out, WithSet({"a"}), root=tmp_path)
    with pytest.raises(TypeError, match=r"value: union .* is ambiguous"):
        save_output(out, Ambiguous(1), root=tmp_path)
    with pytest.raises(TypeError, match="count: expected int, got int64"):
        save_output(out, Counted(np.int64(1), tmp_path), root=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="count: expected int, got bool"):
        save_output(out, Counted(True, tmp_path), root=tmp_path)
    with pytest.raises(ValueError, match="where: path lies outside the spool root"):
        save_output(out, Counted(1, tmp_path / ".." / "x"), root=tmp_path)
    value = sample(tmp_path)
    finding = value.frames[0].finding
    assert finding is not None and isinstance(finding.spot, Spot)
    object.__setattr__(finding.spot, "heat", finding.spot.heat.astype(np.float64))
    with pytest.raises(TypeError, match=r"frames\[0\]\.finding\.spot\.heat: .* not float32"):
        save_output(out, value, root=tmp_path)
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --- planted and corrupt files -------------------------------------------------------


class Payload:
    """Unpickling this creates ``marker``: the code a planted pickle would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return Path.touch, (self.marker,)


@pytest.mark.parametrize(("protocol", "message"), [(0, "is not JSON"), (4, "is not UTF-8")])
def test_a_planted_pickle_runs_nothing(
    saved: Path, tmp_path: Path, protocol: int, message: str
) -> None:
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Payload(live), protocol=protocol))
    assert live.exists()  # the payload is real
    marker = tmp_path / "marker"
    planted = pickle.dumps(Payload(marker), protocol=protocol)
    (saved / DOCUMENT).write_bytes(planted)
    with pytest.raises(StageOutputError, match=message):
        load_output(saved, Sample, root=spool_of(saved))
    save_output(saved, sample(spool_of(saved)), root=spool_of(saved))
    (saved / HEAT_FILE).write_bytes(planted)
    with pytest.raises(StageOutputError, match=r"heat: array file is not a \.npy file"):
        load_output(saved, Sample, root=spool_of(saved))
    assert not marker.exists()


def test_an_object_array_runs_nothing(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    objects = np.array([Payload(marker), Payload(marker)], dtype=object)
    with (saved / HEAT_FILE).open("wb") as file:
        np.save(file, objects, allow_pickle=True)
    with pytest.raises(StageOutputError, match="dtype or shape differs from the document"):
        load_output(saved, Sample, root=spool_of(saved))
    document = read_document(saved)
    spot = document["value"]["frames"][0]["finding"]["spot"]["value"]
    spot["heat"].update(dtype="|O", shape=[2])  # the document agrees with the planted file
    write_document(saved, document)
    with pytest.raises(StageOutputError, match="heat: array dtype is not bool or numeric"):
        load_output(saved, Sample, root=spool_of(saved))
    assert not marker.exists()
    np.load(saved / HEAT_FILE, allow_pickle=True)
    assert marker.exists()  # the planted file was live


def _at(document: dict[str, Any], frame: int = 0) -> dict[str, Any]:
    finding: dict[str, Any] = document["value"]["frames"][frame]["finding"]
    return finding


PLANTED: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "wrong type name": (lambda d: d.update(type="Other"), "holds another type than Sample"),
    "wrong schema version": (lambda d: d.update(schema_version=2), "schema version 2, expected 3"),
    "no schema version": (lambda d: d.update(schema_version="3"), "schema version none"),
    "wrong format": (lambda d: d.update(format=2), "not format 1"),
    "extra header key": (lambda d: d.update(code="x"), "not a stage output document"),
    "extra field": (lambda d: d["value"].update(surprise=1), "Sample has no field 'surprise'"),
    "missing field": (lambda d: d["value"].pop("job_id"), "field 'job_id' of Sample is missing"),
    "string for int": (lambda d: d["value"].update(job_id="7"), "job_id: expected an integer"),
    "bool for int": (lambda d: d["value"].update(job_id=True), "job_id: expected an integer"),
    "int for bool": (lambda d: d["value"].update(flags=[1]), r"flags\[0\]: expected a boolean"),
    "string for float": (lambda d: d["value"].update(score="1"), "score: expected a number"),
    "unknown constant": (
        lambda d: d["value"].update(score={"float": "nan!"}),
        "score: expected a number",
    ),
    "literal outside": (
        lambda d: _at(d).update(side="middle"),
        r"frames\[0\].finding.side: value is not one of \('left', 'right'\)",
    ),
    "unknown enum": (lambda d: _at(d).update(colour="cmyk"), "colour: value is not one of Colour"),
    "unknown kind": (
        lambda d: _at(d).update(spot={"kind": "Payload", "value": {}}),
        "spot: kind is not one of Spot, Gone",
    ),
    "untagged member": (
        lambda d: _at(d).update(spot={"reason": "x"}),
        "spot: expected one of Spot, Gone, found an object",
    ),
    "short tuple": (lambda d: _at(d).update(box=[1, 2, 3]), "box: expected 4 items, found 3"),
    "absolute path": (
        lambda d: d["value"].update(work_dir="/etc"),
        "work_dir: path is absolute or leaves the spool root",
    ),
    "escaping path": (
        lambda d: d["value"]["frames"][1].update(png="work/../../etc/passwd"),
        r"frames\[1\].png: path is absolute or leaves the spool root",
    ),
    "array shape differs": (
        lambda d: _at(d)["spot"]["value"]["heat"].update(shape=[4, 3]),
        "heat: array file's dtype or shape differs from the document",
    ),
    "array index elsewhere": (
        lambda d: _at(d)["spot"]["value"]["heat"].update(array="../../x"),
        "heat: array reference is malformed",
    ),
    "missing array file": (
        lambda d: _at(d)["spot"]["value"]["heat"].update(array=9),
        r"heat: 9.npy cannot be opened \(No such file or directory\)",
    ),
    "array for a string": (
        lambda d: d["value"].update(notes=[{"array": 1, "dtype": "<f4", "shape": [3, 4]}]),
        r"notes\[0\]: expected a string, found an object",
    ),
}


@pytest.mark.parametrize("case", PLANTED)
def test_crafted_json_fails_with_the_field_and_not_the_value(saved: Path, case: str) -> None:
    change, message = PLANTED[case]
    document = read_document(saved)
    change(document)
    write_document(saved, document)
    with pytest.raises(StageOutputError, match=message) as caught:
        load_output(saved, Sample, root=spool_of(saved))
    assert str(caught.value).startswith(f"{saved}: ")
    for secret in ("middle", "cmyk", "/etc", "passwd", "surprise"):
        assert secret not in str(caught.value).replace("'surprise'", "")


RAW: dict[str, tuple[bytes, str]] = {
    "not UTF-8": (b"\xff\xfe{}", "is not UTF-8"),
    "not JSON": (b'{"format": 1,', "is not JSON"),
    "empty": (b"", "is not JSON"),
    "NaN token": (b'{"format": NaN}', "NaN is not JSON"),
    "duplicate key": (b'{"format": 1, "format": 1}', "an object has a key twice"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "is not JSON"),
    "huge integer": (b"1" * 5000, "is not JSON"),
    "a list": (b"[]", "not a stage output document"),
}


@pytest.mark.parametrize("case", RAW)
def test_a_document_that_is_not_json_fails(saved: Path, case: str) -> None:
    raw, message = RAW[case]
    (saved / DOCUMENT).write_bytes(raw)
    with pytest.raises(StageOutputError, match=message):
        load_output(saved, Sample, root=spool_of(saved))


def test_a_truncated_or_padded_array_file_fails(saved: Path) -> None:
    array_file = saved / HEAT_FILE
    whole = array_file.read_bytes()
    array_file.write_bytes(whole[:-3])
    with pytest.raises(StageOutputError, match="heat: array file is truncated"):
        load_output(saved, Sample, root=spool_of(saved))
    array_file.write_bytes(whole[:40])
    with pytest.raises(StageOutputError, match=r"heat: array file is not a \.npy file"):
        load_output(saved, Sample, root=spool_of(saved))
    array_file.write_bytes(whole + b"\0")
    with pytest.raises(StageOutputError, match="heat: array file is too long"):
        load_output(saved, Sample, root=spool_of(saved))


def test_a_missing_array_file_or_folder_fails(saved: Path) -> None:
    (saved / "2.npy").unlink()
    with pytest.raises(StageOutputError, match=r"inside: 2\.npy cannot be opened"):
        load_output(saved, Sample, root=spool_of(saved))
    shutil.rmtree(saved)
    with pytest.raises(StageOutputError, match="no stage output"):
        load_output(saved, Sample, root=spool_of(saved))


def test_files_are_never_read_through_symlinks_or_from_fifos(saved: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    (saved / DOCUMENT).rename(elsewhere)
    (saved / DOCUMENT).symlink_to(elsewhere)
    with pytest.raises(StageOutputError, match=r"output\.json cannot be opened"):
        load_output(saved, Sample, root=spool_of(saved))
    (saved / DOCUMENT).unlink()
    os.mkfifo(saved / DOCUMENT)  # would block a plain open() for ever
    with pytest.raises(StageOutputError, match=r"output\.json is not a regular file"):
        load_output(saved, Sample, root=spool_of(saved))


def test_a_wrong_schema_version_in_the_code_fails_too(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Sample, "SCHEMA_VERSION", 4)
    with pytest.raises(StageOutputError, match="schema version 3, expected 4"):
        load_output(saved, Sample, root=spool_of(saved))


# --- replacing an output -------------------------------------------------------------


def test_saving_again_replaces_the_output_and_leaves_no_temporary_folder(saved: Path) -> None:
    root = spool_of(saved)
    save_output(saved, Wrapped(inputs=Gone("second"), more=()), root=root)
    assert load_output(saved, Wrapped[Gone], root=root) == Wrapped(Gone("second"), ())
    assert [p.name for p in saved.iterdir()] == [DOCUMENT]  # the first one's arrays are gone
    assert [p.name for p in saved.parent.iterdir()] == ["00-sample"]


def test_a_failed_save_keeps_the_older_output(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", full)
    root = spool_of(saved)
    with pytest.raises(OSError, match="disk full"):
        save_output(saved, sample(root), root=root)
    assert [p.name for p in saved.parent.iterdir()] == ["00-sample"]
    assert_same(load_output(saved, Sample, root=root), sample(root))
