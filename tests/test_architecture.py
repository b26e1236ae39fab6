"""The layer rules are executable: import-linter contracts, a torch-free listener, module size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PRODUCT_PACKAGES = ("dicom_node", "pipeline", "models", "imaging", "phantoms", "db")
# A product module longer than this says at its top why ("Longer than ... because").
MAX_MODULE_LINES = 500
MODEL_FRAMEWORKS = ("torch", "ultralytics", "transformers", "segmentation_models_pytorch")


def test_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_fresh_interpreter_that_imports_the_listener_has_no_model_framework() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import dicom_node.network as network\n"
        "names = [m.name for m in pkgutil.walk_packages(network.__path__, 'dicom_node.network.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
        f"print(sorted(m for m in {MODEL_FRAMEWORKS!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    count, loaded = result.stdout.split("\n")[:2]
    assert int(count) >= 10  # every networking module was imported
    assert loaded == "[]"


def test_long_product_modules_say_why() -> None:
    unexplained = []
    for package in PRODUCT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            lines = text.count("\n")
            if lines > MAX_MODULE_LINES and "Longer than" not in text[:2000]:
                unexplained.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert unexplained == []
