"""The simulated-site proof, small: every step of a site's path to its own model, one command each.

Runs ``benchmarks/site_proof.py`` as a site would run the commands (a real node
over DICOM, the real ``llnm-node`` commands, a real PACS): 24 site-b studies to
develop on, 4 to test on, one epoch of fine-tuning. The statistical targets need
the script's full size (README); here every step must work: the shift is
measured, both new bundles answer in shadow on the test studies and only there,
and after the promotion the next SR in the PACS comes from the fine-tuned bundle.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)  # about 4 minutes on 2 cores: 29 studies through a node, training
def test_a_simulated_site_measures_adapts_and_promotes(tmp_path: Path) -> None:
    out = tmp_path / "proof"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "site_proof.py"), "--develop", "24",
         "--test", "4", "--epochs", "1", "--holdout", "0", "--min-cases", "3",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads((out / "site_proof.json").read_text(encoding="utf-8"))
    shift = result["phase1_shift"]
    assert shift["cases"] == 24 and shift["predicted"] >= 18  # no-nodule studies count too
    assert shift["calibration_error"] > 0.1  # the site's prevalence is not the phantoms'
    assert 0.5 < shift["bayes_auc"] <= 1.0
    held_out = result["phase2_held_out"]
    for bundle in ("live", "calibrated", "fine_tuned"):
        assert held_out[bundle]["cases"] == 4, bundle  # each answered every test study
        against_risk = held_out[bundle]["calibration_error_against_risk"]
        if held_out[bundle]["predicted"]:  # against each study's known risk
            assert against_risk is not None and 0.0 <= against_risk <= 1.0, bundle
        else:
            assert against_risk is None, bundle
    assert held_out["live"]["predicted"] >= 3
    assert result["promoted"] == {
        "result_version": "0.4.0-site-tuned",
        "sr_names": "0.4.0-site-tuned",
    }
    assert result["targets"]["promoted_sr"] is True
    assert (
        "$ llnm-node dataset export" in done.stdout and "$ llnm-node bundle derive" in done.stdout
    )
