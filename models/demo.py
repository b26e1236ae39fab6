"""The demo model bundle shipped in the repository (trained on synthetic phantoms only)."""

from __future__ import annotations

from pathlib import Path

DEMO_BUNDLE_DIR = Path(__file__).parent / "demo_bundle"
