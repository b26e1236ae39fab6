import os
from pathlib import Path

import pytest

from dicom_node.network.spool import Spool


def test_store_places_file_under_study_and_sop(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    received = spool.layout.tmp / "rx.dcm"
    received.write_bytes(b"DICM" * 1000)
    stored = spool.place(received, study_uid="1.2.3", sop_uid="1.2.3.4")
    assert stored.relative_path == "incoming/1.2.3/1.2.3.4.dcm"
    assert stored.size_bytes == 4000
    assert spool.layout.path_of(stored.relative_path).read_bytes() == b"DICM" * 1000
    assert received.exists()  # a second name: pynetdicom removes its temporary file itself


def test_store_from_another_folder_copies(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    outside = tmp_path / "elsewhere.dcm"
    outside.write_bytes(b"abc")
    stored = spool.place(outside, study_uid="1.2", sop_uid="1.2.9")
    assert spool.layout.path_of(stored.relative_path).read_bytes() == b"abc"


def test_hostile_uids_cannot_escape_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    received = spool.layout.tmp / "rx"
    received.write_bytes(b"x")
    stored = spool.place(received, study_uid="../../etc", sop_uid="../passwd")
    path = spool.layout.path_of(stored.relative_path).resolve()
    assert path.is_relative_to(spool.layout.incoming)


def test_leftover_of_a_crash_is_replaced(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    target = spool.layout.path_of(spool.layout.instance_path(study_uid="1.2", sop_uid="1.2.5"))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"half")
    received = spool.layout.tmp / "rx"
    received.write_bytes(b"whole")
    with pytest.raises(FileExistsError):
        spool.place(received, study_uid="1.2", sop_uid="1.2.5")
    assert target.read_bytes() == b"half"
    spool.place(received, study_uid="1.2", sop_uid="1.2.5", replace=True)
    assert target.read_bytes() == b"whole"


def test_prepare_empties_tmp_and_quarantine_keeps_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    (spool.layout.tmp / "partial").write_bytes(b"x")
    spool.prepare()
    assert list(spool.layout.tmp.iterdir()) == []
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"garbage")
    kept = spool.quarantine(bad, reason="cannot parse")
    assert spool.layout.path_of(kept).read_bytes() == b"garbage"
    assert spool.layout.path_of(kept).with_suffix(".txt").read_text().strip() == "cannot parse"
    assert bad.exists()  # quarantine copies; the caller's file is untouched


def test_discard_removes_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    received = spool.layout.tmp / "rx"
    received.write_bytes(b"x")
    stored = spool.place(received, study_uid="1", sop_uid="2")
    spool.discard(stored)
    assert not spool.layout.path_of(stored.relative_path).exists()


@pytest.mark.parametrize(
    ("options", "fsyncs"),
    # the file, the new study folder, incoming/ and, after the discard, the study folder again
    [({}, 4), ({"durable": False}, 0)],
    ids=["default-durable", "not-durable"],
)
def test_a_spool_fsyncs_unless_made_not_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, bool], fsyncs: int
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    spool = Spool(tmp_path / "spool", **options)
    spool.prepare()
    received = spool.layout.tmp / "rx"
    received.write_bytes(b"x")
    stored = spool.place(received, study_uid="1", sop_uid="2")
    spool.discard(stored)
    assert len(synced) == fsyncs
    assert not spool.layout.path_of(stored.relative_path).exists()
