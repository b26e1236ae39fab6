"""The UNet++ thyroid segmenter: config, safetensors weights, letterboxing, training, offline use.

Everything runs on the CPU with tiny inputs (64x96) and tiny phantoms
(120x160 frames), so the whole file stays well under a minute and a half.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dicom_node.cli.main import app
from imaging.overlap import dice
from models.checkpoints import load_checkpoint
from models.segmentation import (
    Segmenter,
    SegmenterConfig,
    build_model,
    load_segmenter,
    predict_probabilities,
    save_segmenter,
    segment,
)
from models.segmentation.data import load_view, read_records, split_by_case
from models.segmentation.letterbox import Letterbox
from models.segmentation.training import evaluate_folder
from phantoms import PhantomOptions, export_phantoms

TINY = SegmenterConfig(input_height=64, input_width=96)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def tiny_segmenter(seed: int = 0) -> Segmenter:
    torch.manual_seed(seed)
    return Segmenter.wrap(build_model(TINY), TINY, torch.device("cpu"))


def train(data: Path, out: Path, *args: str) -> dict[str, Any]:
    result = runner.invoke(
        app,
        ["train-seg", "thyroid", "--data", str(data), "--out", str(out),
         "--height", "64", "--width", "96", "--batch-size", "6", "--val-fraction", "0.25",
         *args],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return dict(json.loads((out / "metrics.json").read_text()))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    export_phantoms(out, n=12, seed=3, options=PhantomOptions(rows=120, columns=160))
    return out


# --- config, build, weights --------------------------------------------------------------


def test_config_round_trips_and_refuses_bad_values(tmp_path: Path) -> None:
    TINY.save(tmp_path)
    assert SegmenterConfig.load(tmp_path) == TINY
    with pytest.raises(ValueError, match="multiples of 32"):
        SegmenterConfig(input_height=100)
    with pytest.raises(ValueError, match="encoder"):
        SegmenterConfig.from_dict({**TINY.to_dict(), "encoder": "vit_huge"})
    with pytest.raises(ValueError, match="unknown"):
        SegmenterConfig.from_dict({**TINY.to_dict(), "pickle": True})


def test_model_builds_offline_and_gives_finite_logits() -> None:
    model = build_model(TINY).eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, 1, 64, 96))
    assert logits.shape == (2, 1, 64, 96)
    assert torch.isfinite(logits).all()


def test_safetensors_round_trip_gives_identical_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segmenter = tiny_segmenter()
    save_segmenter(tmp_path, segmenter.model, TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load (pickle) must not be used")

    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_segmenter(tmp_path, torch.device("cpu"))
    assert loaded.config == TINY
    crop = np.random.default_rng(0).integers(0, 256, (90, 130), dtype=np.uint8)
    (before,) = predict_probabilities(segmenter, [crop])
    (after,) = predict_probabilities(loaded, [crop])
    np.testing.assert_array_equal(before, after)


def test_loading_refuses_weights_of_another_architecture(tmp_path: Path) -> None:
    save_segmenter(tmp_path, tiny_segmenter().model, TINY)
    SegmenterConfig(input_height=64, input_width=96, encoder="resnet18").save(tmp_path)
    with pytest.raises(RuntimeError, match="state_dict"):
        load_segmenter(tmp_path, torch.device("cpu"))


# --- letterbox ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(301, 457), (301, 457, 3), (457, 301), (7, 200)])
def test_mask_comes_back_at_crop_size(shape: tuple[int, ...]) -> None:
    crop = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    segmenter = tiny_segmenter()
    mask = segment(segmenter, [crop], "thyroid")[0]
    assert mask.shape == shape[:2] and mask.dtype == np.bool_
    masks = segment(segmenter, [crop, crop[:50, :60]], "thyroid")
    assert [m.shape for m in masks] == [shape[:2], (min(50, shape[0]), 60)]


@pytest.mark.parametrize("shape", [(301, 457), (457, 301), (64, 96)])
def test_letterbox_keeps_aspect_ratio_and_maps_back(shape: tuple[int, int]) -> None:
    box = Letterbox.fit(*shape, 64, 96)
    assert abs(box.width / box.height - shape[1] / shape[0]) < 0.05
    assert box.height == 64 or box.width == 96
    truth = np.zeros(shape, dtype=np.uint8)
    centre, axes = (shape[1] // 2, shape[0] // 2), (shape[1] // 3, shape[0] // 4)
    cv2.ellipse(truth, centre, axes, 0, 0, 360, 1, -1)
    padded = box.apply(truth, (64, 96), nearest=True)
    restored = box.restore(padded.astype(np.float32)) > 0.5
    assert restored.shape == shape
    assert dice(restored, truth.astype(bool)) > 0.95


def test_bad_crops_are_refused() -> None:
    segmenter = tiny_segmenter()
    with pytest.raises(ValueError, match="uint8"):
        segment(segmenter, [np.zeros((10, 10), dtype=np.float32)], "thyroid")
    with pytest.raises(ValueError, match="H, W"):
        segment(segmenter, [np.zeros((10, 10, 4), dtype=np.uint8)], "thyroid")


# --- data set format ----------------------------------------------------------------------


def test_site_dataset_without_image_area_splits_by_case(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(2)
    with (tmp_path / "cases.jsonl").open("w") as fp:
        for case in range(5):
            views = []
            for view in ("a", "b"):
                image_path, mask_path = f"images/{case}_{view}.png", f"masks/{case}_{view}.png"
                pixels = rng.integers(0, 256, (40, 50), dtype=np.uint8)
                cv2.imwrite(str(tmp_path / image_path), pixels)
                cv2.imwrite(str(tmp_path / mask_path), np.full((40, 50), 255, dtype=np.uint8))
                views.append({"image": image_path, "thyroid_mask": mask_path})
            fp.write(json.dumps({"case_id": f"site-{case}", "views": views}) + "\n")
    records = read_records(tmp_path)
    assert len(records) == 10
    image, mask = load_view(records[0])
    assert image.shape == mask.shape == (40, 50) and mask.all()
    train_views, val_views = split_by_case(records, 0.4, seed=0)
    assert len(val_views) == 4
    assert not {r.case_id for r in train_views} & {r.case_id for r in val_views}
    assert split_by_case(records, 0.4, seed=0) == (train_views, val_views)


def test_phantom_views_crop_to_the_image_area(phantoms: Path) -> None:
    records = read_records(phantoms)
    assert len(records) == 24 and all(r.image_area is not None for r in records)
    image, mask = load_view(records[0])
    x0, y0, x1, y1 = records[0].image_area or (0, 0, 0, 0)
    assert image.shape == mask.shape == (y1 - y0, x1 - x0)
    assert mask.any()


# --- training -----------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_training_writes_bundle_curve_checkpoint_and_resumes(
    phantoms: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    metrics = train(phantoms, out, "--epochs", "2", "--seed", "5")
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint", "config.json", "metrics.json", "model.safetensors", "training_curve.png",
    ]  # fmt: skip
    suffixes = {p.suffix for p in out.rglob("*")}
    assert not suffixes & {".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    for row in metrics["history"]:
        assert 0.0 <= row["val_dice"] <= 1.0 and 0.0 <= row["val_iou"] <= 1.0
        assert np.isfinite(row["train_loss"])
    assert metrics["split"]["val_cases"] == 3 and metrics["split"]["train_views"] == 18
    assert metrics["training_data"]["synthetic"] is True
    assert "NOT FOR CLINICAL USE" in metrics["training_data"]["intended_use"]
    assert png_size(out / "training_curve.png") == (900, 350)
    assert load_checkpoint(out / "checkpoint").trainer["epoch"] == 2

    resumed = train(phantoms, out, "--epochs", "3", "--seed", "5", "--resume")
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == metrics["history"]
    assert load_checkpoint(out / "checkpoint").trainer["epoch"] == 3
    segmenter = load_segmenter(out, torch.device("cpu"))
    scores = evaluate_folder(segmenter, phantoms)
    assert scores["views"] == 24 and 0.0 <= scores["dice"] <= 1.0

    # The same seed gives the same first epoch; another seed does not.
    again = train(phantoms, tmp_path / "again", "--epochs", "1", "--seed", "5")
    assert again["history"][0]["train_loss"] == metrics["history"][0]["train_loss"]
    other = train(phantoms, tmp_path / "other", "--epochs", "1", "--seed", "6")
    assert other["history"][0]["train_loss"] != metrics["history"][0]["train_loss"]


def test_resume_refuses_another_seed_and_a_missing_checkpoint(
    phantoms: Path, tmp_path: Path
) -> None:
    args = ["train-seg", "thyroid", "--data", str(phantoms), "--out", str(tmp_path / "x")]
    result = runner.invoke(app, [*args, "--resume", "--height", "64", "--width", "96"])
    assert result.exit_code == 1 and "cannot train" in result.output
    result = runner.invoke(app, [*args, "--height", "100"])
    assert result.exit_code == 1 and "multiples of 32" in result.output


def test_fine_tuning_starts_from_given_weights_of_the_same_config(
    phantoms: Path, tmp_path: Path
) -> None:
    start = tmp_path / "start"
    train(phantoms, start, "--epochs", "1", "--seed", "5")
    tuned = tmp_path / "tuned"
    metrics = train(phantoms, tuned, "--epochs", "1", "--seed", "6", "--learning-rate", "1e-6",
                    "--init-from", str(start))  # fmt: skip
    assert metrics["options"]["init_from"] == str(start)

    def parameters(folder: Path) -> dict[str, torch.Tensor]:
        model = load_segmenter(folder, torch.device("cpu")).model
        return {name: p.detach().clone() for name, p in model.named_parameters()}

    before, after = parameters(start), parameters(tuned)
    # 1e-6 for one epoch moves no weight far from where it started ...
    assert max(float((after[k] - before[k]).abs().max()) for k in before) < 1e-4
    # ... whereas another seed's random start is nowhere near.
    scratch = train(phantoms, tmp_path / "scratch", "--epochs", "1", "--seed", "6",
                    "--learning-rate", "1e-6")  # fmt: skip
    assert scratch["options"]["init_from"] is None
    assert (
        max(float((parameters(tmp_path / "scratch")[k] - before[k]).abs().max()) for k in before)
        > 1e-2
    )

    # The start's configuration is kept: another --height or --width does not apply.
    args = ["train-seg", "thyroid", "--data", str(phantoms), "--epochs", "1"]
    kept = tmp_path / "kept"
    result = runner.invoke(app, [*args, "--out", str(kept), "--height", "96", "--width", "96",
                                 "--init-from", str(start)])  # fmt: skip
    assert result.exit_code == 0, result.output
    config = load_segmenter(kept, torch.device("cpu")).config
    assert config.to_dict() == load_segmenter(start, torch.device("cpu")).config.to_dict()
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "bad"),
                                 "--init-from", str(tmp_path / "missing")])  # fmt: skip
    assert result.exit_code == 1 and "cannot train" in result.output


# --- offline ------------------------------------------------------------------------------

OFFLINE_SCRIPT = """
import socket
import numpy as np, torch
try:
    socket.create_connection(("1.1.1.1", 443), timeout=2)
    raise SystemExit("network reachable")
except OSError:
    pass
from models.segmentation import Segmenter, SegmenterConfig, build_model, segment
from models.segmentation.metrics import DiceBCELoss
config = SegmenterConfig(input_height=64, input_width=96)
model = build_model(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
loss = DiceBCELoss()(model(torch.randn(2, 1, 64, 96)), torch.ones(2, 1, 64, 96))
loss.backward()
optimizer.step()
mask = segment(Segmenter.wrap(model, config), [np.zeros((33, 71, 3), np.uint8)], "thyroid")[0]
print("offline ok", mask.shape)
"""


def test_build_train_and_infer_with_no_network() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(
        ["unshare", "--net", "--map-root-user", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"unshare --net not permitted here: {probe.stderr.strip()}")
    result = subprocess.run(
        ["unshare", "--net", "--map-root-user", sys.executable, "-c", OFFLINE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "offline ok (33, 71)" in result.stdout
