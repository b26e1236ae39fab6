"""ultralytics with everything that could reach the network switched off.

Every module of this project that needs ultralytics imports it from here.
Before ultralytics is first imported, the environment makes it offline
(``YOLO_OFFLINE``: no connectivity probe, no downloads), forbids it to pip
install anything (``YOLO_AUTOINSTALL``), keeps it quiet and points its
settings file at a folder of this node's own (``YOLO_CONFIG_DIR``, default
``<tmp>/llnm-node-ultralytics-<uid>``) rather than the user's home. The
settings then switch off usage events (``sync``) and the third-party
logger integrations. Models are built from ultralytics' bundled yaml files;
its trainer, predictor, hub and export code (fonts, AMP check downloads,
``*.pt`` weights) are never used.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_OFF = "false"
_SETTINGS_OFF = ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")


def _switch_off() -> None:
    os.environ["YOLO_OFFLINE"] = "true"
    os.environ["YOLO_AUTOINSTALL"] = _OFF
    os.environ.setdefault("YOLO_VERBOSE", _OFF)
    default = Path(tempfile.gettempdir()) / f"llnm-node-ultralytics-{os.getuid()}"
    folder = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(default)))
    folder.mkdir(parents=True, exist_ok=True)


_switch_off()

from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.nn.tasks import SegmentationModel  # noqa: E402
from ultralytics.utils import ONLINE, SETTINGS  # noqa: E402
from ultralytics.utils.nms import non_max_suppression  # noqa: E402
from ultralytics.utils.ops import crop_mask  # noqa: E402

if any(SETTINGS.get(key) for key in _SETTINGS_OFF):
    SETTINGS.update(dict.fromkeys(_SETTINGS_OFF, False))  # type: ignore[no-untyped-call]
if ONLINE:
    raise RuntimeError("ultralytics was imported before it was switched offline")

__all__ = ["SegmentationModel", "crop_mask", "get_cfg", "non_max_suppression"]
