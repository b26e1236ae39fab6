"""Fine-tuning on site data: runs that start from a bundle, and the new sealed bundle they make.

Real phantom data sets and DICOM studies, the real demo bundle, real training
(one epoch of the tiny model on the CPU), a real node for the site's studies.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_cli import invoke, write_config
from test_imaging_jobs import Factory, finished_jobs
from test_report_stage import _send_as_pacs

from db.session import Database
from dicom_node.app.fine_tune import derive_bundle, site_studies
from dicom_node.app.wiring import spool_layout
from models.bundle import LLNM_DIR, MANIFEST_FILE, bundle_digest, verify_bundle
from models.demo import DEMO_BUNDLE_DIR
from models.llnm.tmdl import TMDL
from models.llnm.weights import load_tmdl
from models.model_card import bundle_card
from models.scope import load_scope
from phantoms import export_phantoms, make_case
from phantoms.dataset_export import case_seed
from pipeline.infer import LlnmLoader
from pipeline.offline import write_study

DEMO_LLNM = DEMO_BUNDLE_DIR / LLNM_DIR


@pytest.fixture(scope="module")
def site_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site-data")
    export_phantoms(out, n=24, seed=8)
    return out


@pytest.fixture(scope="module")
def fine_tuned_run(site_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch from the demo bundle's LLNM-Net at a learning rate that barely moves it."""
    run = tmp_path_factory.mktemp("runs") / "llnm"
    code, out = invoke("train", "--data", str(site_data), "--out", str(run),
                       "--init-from", str(DEMO_BUNDLE_DIR), "--epochs", "1",
                       "--learning-rate", "1e-7")  # fmt: skip
    assert code == 0, out
    return run


def _largest_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    other = b.state_dict()
    return max(
        float((value.float() - other[name].float()).abs().max())
        for name, value in a.state_dict().items()
        if value.is_floating_point()
    )


def test_train_init_from_a_bundle_starts_from_its_weights(
    fine_tuned_run: Path, site_data: Path, tmp_path: Path
) -> None:
    demo, demo_config = load_tmdl(DEMO_LLNM)
    tuned, tuned_config = load_tmdl(fine_tuned_run)
    assert tuned_config == demo_config  # the start's architecture, whatever --size says
    assert _largest_difference(tuned, demo) < 1e-3
    torch.manual_seed(0)
    assert _largest_difference(TMDL(demo_config), demo) > 0.05  # what a fresh start would be

    code, out = invoke("train", "--data", str(site_data), "--out", str(tmp_path / "x"),
                       "--init-from", str(site_data))  # fmt: skip
    assert code == 1 and "holds no LLNM-Net" in out


def _studies(folder: Path, count: int) -> list[list[Path]]:
    return [
        write_study(make_case(case_seed(9, i)).datasets, folder / f"study{i}") for i in range(count)
    ]


def test_derive_bundle_replaces_the_component_records_lineage_and_refits_scope(
    fine_tuned_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tuned"
    lineage = derive_bundle(
        DEMO_BUNDLE_DIR,
        out,
        version="0.4.0-site",
        runs={"llnm": fine_tuned_run},
        scope_studies=_studies(tmp_path / "site", 12),
    )
    manifest = verify_bundle(out)
    assert manifest.version == "0.4.0-site" and manifest.name == verify_bundle(DEMO_BUNDLE_DIR).name
    parent = manifest.training_data["parent"]
    digest = bundle_digest(DEMO_BUNDLE_DIR)
    assert parent["manifest_sha256"] == digest == lineage["parent"]["manifest_sha256"]
    assert manifest.training_data["fine_tuned"]["llnm"]["best_epoch"] == 1
    assert (out / LLNM_DIR / "model.safetensors").read_bytes() == (
        fine_tuned_run / "model.safetensors"
    ).read_bytes()
    assert not (out / LLNM_DIR / "checkpoint").exists()
    assert not list(out.rglob("features-*"))
    assert manifest.metrics["llnm"] == json.loads((fine_tuned_run / "metrics.json").read_text())
    card = {row[0]: row[1] for section in bundle_card(out).sections for row in section.rows}
    assert card["Parent bundle"].startswith("llnm-demo 0.4.0 (manifest SHA-256 " + digest[:16])
    assert card["Site fine-tuning"].startswith("llnm: best validation AUC")
    scope = load_scope(out)
    assert scope is not None
    assert scope.fitted_on["source"] == "site studies in the node's spool"
    assert scope.fitted_on["studies"] == 12 and scope.fitted_on["fit"] == 9
    assert load_scope(DEMO_BUNDLE_DIR) != scope
    served = LlnmLoader(out)()  # the node can serve it
    assert served.manifest.version == "0.4.0-site" and served.digest == bundle_digest(out)

    with pytest.raises(ValueError, match="exists"):
        derive_bundle(DEMO_BUNDLE_DIR, out, version="x", runs={"llnm": fine_tuned_run},
                      scope_studies=[])  # fmt: skip
    with pytest.raises(ValueError, match="some of"):
        derive_bundle(DEMO_BUNDLE_DIR, tmp_path / "y", version="x",
                      runs={"tokenizer": fine_tuned_run}, scope_studies=[])  # fmt: skip
    with pytest.raises(ValueError, match="scope statistics need"):
        derive_bundle(DEMO_BUNDLE_DIR, tmp_path / "z", version="x",
                      runs={"llnm": fine_tuned_run}, scope_studies=[])  # fmt: skip
    broken = tmp_path / "broken-run"
    shutil.copytree(fine_tuned_run, broken)
    (broken / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        derive_bundle(DEMO_BUNDLE_DIR, tmp_path / "w", version="x", runs={"llnm": broken},
                      scope_studies=_studies(tmp_path / "more", 10))  # fmt: skip


def test_bundle_derive_on_a_node_fits_on_its_studies_and_installs_in_shadow(
    node_factory: Factory, fine_tuned_run: Path, tmp_path: Path
) -> None:
    database = Database(f"sqlite:///{tmp_path / 'jobs.db'}")  # one database: the SQL is plain
    node = node_factory(database_url=database.url, data_dir=tmp_path / "data")
    for i in range(10):
        _send_as_pacs(node, [*make_case(case_seed(10, i)).datasets], tmp_path / f"case{i}")
    assert all(j.state == "done" for j in finished_jobs(node, 10, timeout=300))
    with database.session() as session:
        found = site_studies(session, spool_layout(node.settings), 50)
    assert len(found) == 10 and all(p.is_file() for study in found for p in study)

    config = str(write_config(tmp_path, database.url))
    out = tmp_path / "tuned"
    code, text = invoke("bundle", "derive", str(DEMO_BUNDLE_DIR), "--out", str(out),
                        "--version", "0.4.0-site", "--llnm", str(fine_tuned_run),
                        "--config", config)  # fmt: skip
    assert code == 0, text
    assert "scope refitted on 10 site studies" in text and "in shadow" in text
    code, text = invoke("bundle", "list", "--config", config)
    assert code == 0 and "0.4.0-site" in text and "shadow" in text
    assert json.loads((out / MANIFEST_FILE).read_text())["version"] == "0.4.0-site"
