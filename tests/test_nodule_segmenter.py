"""The YOLOv8-seg nodule segmenter: config, targets, loss, weights, training, offline use.

Tiny inputs (64x96) and tiny phantoms (120x160 frames) keep the file short on a CPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dicom_node.cli.main import app
from models.checkpoints import load_checkpoint
from models.segmentation import (
    Segmenter,
    SegmenterConfig,
    YoloSegConfig,
    build_model,
    load_config,
    load_segmenter,
    predict_probabilities,
    save_segmenter,
    segment,
)
from models.segmentation.config import config_from_dict
from models.segmentation.nodule import instance_targets, yolo_loss
from phantoms import PhantomOptions, export_phantoms

TINY = YoloSegConfig(input_height=64, input_width=96)
REPO = Path(__file__).parent.parent
ULTRALYTICS_IMPORT = re.compile(r"^\s*(import|from) ultralytics\b", re.MULTILINE)
runner = CliRunner()


def tiny_segmenter(seed: int = 0) -> Segmenter:
    torch.manual_seed(seed)
    return Segmenter.wrap(build_model(TINY), TINY, torch.device("cpu"))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    export_phantoms(out, n=8, seed=4, options=PhantomOptions(rows=120, columns=160))
    return out


# --- config -------------------------------------------------------------------------------


def test_config_round_trips_and_is_told_apart_from_the_unet(tmp_path: Path) -> None:
    TINY.save(tmp_path)
    assert load_config(tmp_path) == TINY
    assert TINY.model_yaml == "yolov8n-seg.yaml"
    SegmenterConfig().save(tmp_path)
    assert isinstance(load_config(tmp_path), SegmenterConfig)
    with pytest.raises(ValueError, match="unknown segmenter architecture"):
        config_from_dict({"architecture": "MaskRCNN"})
    with pytest.raises(ValueError, match="scale"):
        YoloSegConfig(scale="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiples of 32"):
        YoloSegConfig(input_width=100)
    with pytest.raises(ValueError, match="confidence"):
        YoloSegConfig(confidence=1.0)


# --- targets and loss ---------------------------------------------------------------------


def test_each_connected_component_becomes_one_instance_with_its_box() -> None:
    masks = torch.zeros(3, 1, 64, 96)
    masks[0, 0, 10:20, 30:50] = 1  # 20 wide, 10 high
    masks[0, 0, 40:44, 4:8] = 1
    masks[0, 0, 60, 90] = 1  # a single pixel: too small to train on
    masks[2, 0, 0:64, 0:96] = 1
    targets = instance_targets(masks)
    assert targets["batch_idx"].tolist() == [0, 0, 2]
    assert targets["cls"].shape == (3, 1) and not targets["cls"].any()
    np.testing.assert_allclose(
        targets["bboxes"][0].numpy(), [40 / 96, 15 / 64, 20 / 96, 10 / 64], rtol=1e-6
    )
    np.testing.assert_allclose(targets["bboxes"][2].numpy(), [0.5, 0.5, 1.0, 1.0])
    assert targets["masks"].shape == (3, 64, 96)
    assert targets["masks"][0].sum() == 200 and targets["masks"][1].sum() == 16
    empty = instance_targets(torch.zeros(2, 1, 64, 96))
    assert empty["bboxes"].shape == (0, 4) and empty["masks"].shape == (0, 64, 96)


def test_loss_is_finite_with_and_without_nodules_and_training_lowers_it() -> None:
    torch.manual_seed(0)
    model = build_model(TINY).train()
    x = torch.rand(2, 1, 64, 96)
    y = torch.zeros(2, 1, 64, 96)
    y[0, 0, 20:36, 30:54] = 1
    x[0, 0, 20:36, 30:54] *= 0.2  # a dark nodule
    assert torch.isfinite(yolo_loss(model, x, torch.zeros_like(y)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = yolo_loss(model, x, y)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


# --- inference and weights ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(301, 457), (301, 457, 3), (33, 71)])
def test_untrained_model_finds_nothing_and_masks_come_back_at_crop_size(
    shape: tuple[int, ...],
) -> None:
    crop = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    (mask,) = segment(tiny_segmenter(), [crop], "nodule")
    assert mask.shape == shape[:2] and mask.dtype == np.bool_ and not mask.any()
    with pytest.raises(ValueError, match="not 'thyroid'"):
        segment(tiny_segmenter(), [crop], "thyroid")


def test_half_precision_safetensors_load_back_as_float32_without_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segmenter = tiny_segmenter()
    save_segmenter(tmp_path / "full", segmenter.model, TINY)
    save_segmenter(tmp_path / "half", segmenter.model, TINY, half=True)
    full_size = (tmp_path / "full" / "model.safetensors").stat().st_size
    half_size = (tmp_path / "half" / "model.safetensors").stat().st_size
    assert half_size < 0.6 * full_size

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load (pickle) must not be used")

    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_segmenter(tmp_path / "half", torch.device("cpu"))
    assert loaded.config == TINY
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    x = torch.rand(1, 1, 64, 96)
    with torch.inference_mode():
        before = segmenter.model(x)[0][0]
        after = loaded.model(x)[0][0]
    torch.testing.assert_close(before, after, atol=0.05, rtol=0.01)
    crop = np.random.default_rng(0).integers(0, 256, (90, 130), dtype=np.uint8)
    (probability,) = predict_probabilities(loaded, [crop])
    assert probability.shape == (90, 130)


def test_loading_refuses_weights_of_another_scale(tmp_path: Path) -> None:
    save_segmenter(tmp_path, tiny_segmenter().model, TINY)
    YoloSegConfig(input_height=64, input_width=96, scale="s").save(tmp_path)
    with pytest.raises(RuntimeError, match="state_dict"):
        load_segmenter(tmp_path, torch.device("cpu"))


# --- training -----------------------------------------------------------------------------


def train(data: Path, out: Path, *args: str) -> dict[str, Any]:
    result = runner.invoke(
        app,
        ["train-seg", "nodule", "--data", str(data), "--out", str(out),
         "--height", "64", "--width", "96", "--batch-size", "4", "--val-fraction", "0.25",
         *args],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return dict(json.loads((out / "metrics.json").read_text()))


def test_train_seg_nodule_writes_weights_metrics_curve_and_resumes(
    phantoms: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    metrics = train(phantoms, out, "--epochs", "1", "--seed", "2", "--half")
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint", "config.json", "metrics.json", "model.safetensors", "training_curve.png",
    ]  # fmt: skip
    assert not {p.suffix for p in out.rglob("*")} & {".pt", ".pth", ".pkl", ".ckpt", ".yaml"}
    assert json.loads((out / "config.json").read_text())["architecture"] == "YOLOv8-seg"
    assert metrics["target"] == "nodule" and metrics["split"]["val_cases"] == 2
    assert np.isfinite(metrics["history"][0]["train_loss"])
    assert 0.0 <= metrics["history"][0]["val_dice"] <= 1.0
    assert metrics["training_data"]["synthetic"] is True
    resumed = train(phantoms, out, "--epochs", "2", "--seed", "2", "--half", "--resume")
    assert [row["epoch"] for row in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == metrics["history"][0]
    assert load_checkpoint(out / "checkpoint").trainer["epoch"] == 2
    assert load_segmenter(out, torch.device("cpu")).config.target == "nodule"


# --- offline ------------------------------------------------------------------------------

OFFLINE_SCRIPT = """
import socket
attempts = []
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

def connect(self, address):
    attempts.append(("connect", address))
    return _connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    attempts.append(("getaddrinfo", host))
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
import numpy as np, torch
from models.segmentation import YoloSegConfig, build_model, Segmenter, segment
from models.segmentation.nodule import yolo_loss
config = YoloSegConfig(input_height=64, input_width=96)
model = build_model(config).train()
y = torch.zeros(2, 1, 64, 96)
y[0, 0, 10:30, 20:40] = 1
loss = yolo_loss(model, torch.rand(2, 1, 64, 96), y)
loss.backward()
(mask,) = segment(Segmenter.wrap(model, config), [np.zeros((33, 71), np.uint8)], "nodule")
print("attempts", attempts)
print("offline ok", mask.shape)
"""


def test_nodule_model_builds_trains_and_infers_with_no_network(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(
        ["unshare", "--net", "--map-root-user", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"unshare --net not permitted here: {probe.stderr.strip()}")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env.update(HOME=str(home), TMPDIR=str(tmp_path), XDG_CONFIG_HOME=str(home / ".config"))
    result = subprocess.run(
        ["unshare", "--net", "--map-root-user", sys.executable, "-c", OFFLINE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "attempts []" in result.stdout  # nothing even tried to resolve or connect
    assert "offline ok (33, 71)" in result.stdout
    assert not any(home.rglob("*")), "ultralytics wrote into the user's home"
    settings = json.loads(
        next(tmp_path.glob("llnm-node-ultralytics-*/**/settings.json")).read_text()
    )
    assert settings["sync"] is False


def test_only_the_offline_module_imports_ultralytics() -> None:
    importers = [
        path.relative_to(REPO).as_posix()
        for folder in ("dicom_node", "pipeline", "models", "db")
        for path in (REPO / folder).rglob("*.py")
        if ULTRALYTICS_IMPORT.search(path.read_text())
    ]
    assert importers == ["models/segmentation/yolo_offline.py"]
