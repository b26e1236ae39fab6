"""Reports in any language on one text path: phantom reports, SR intake, encoder, bundle, infer.

No Chinese model can be downloaded, so the Chinese encoder here is built on the spot
(:mod:`models.llnm.text_encoder_build`): a WordPiece vocabulary and a small BertModel
trained briefly on Chinese phantom reports.
"""

# Chinese test texts hold full-width punctuation and letters on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence
from test_imaging_jobs import Factory, done_study
from typer.testing import CliRunner

from dicom_node.cli.main import app
from models.bundle import (
    TEXT_ENCODER_DIR,
    BundleError,
    Manifest,
    include_text_encoder,
    reseal_bundle,
    text_encoder_folder,
    verify_bundle,
)
from models.demo import DEMO_BUNDLE_DIR
from models.llnm.dataset import read_patients
from models.llnm.report_text import model_text, sr_model_text
from models.llnm.text import TextEncoder
from models.llnm.text_encoder_build import EncoderShape, build_text_encoder
from phantoms import PhantomOptions, export_phantoms, make_case
from phantoms.dataset_export import case_seed
from pipeline.contracts import InstanceRef, StudyInput
from pipeline.deidentify import deidentify
from pipeline.intake import INTAKE, IntakeReport

runner = CliRunner()
SMALL = PhantomOptions(rows=240, columns=320)
CHINESE = PhantomOptions(report_language="zh")


@pytest.fixture(scope="module")
def zh_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zh-phantoms")
    export_phantoms(out, n=40, seed=11, options=CHINESE)
    return out


@pytest.fixture(scope="module")
def zh_encoder(zh_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    reports = [p.report_text for p in read_patients(zh_phantoms) if p.report_text is not None]
    out = tmp_path_factory.mktemp("zh-encoder")
    return build_text_encoder(reports, out, EncoderShape(mlm_steps=20), seed=0)


def received_text(study_dir: Path, work: Path) -> str | None:
    """The model text of a study's files after the real intake and de-identification stages."""
    refs = tuple(
        InstanceRef.of(dcmread(p, stop_before_pixels=True), p) for p in sorted(study_dir.iterdir())
    )
    study = StudyInput(job_id=1, study_instance_uid="1.2", instances=refs, work_dir=work)
    report = INTAKE.run(study)
    assert isinstance(report, IntakeReport)
    return deidentify(report).study.job.inputs.report_text


# --- the model text ------------------------------------------------------------------------


def test_model_text_is_nfkc_with_collapsed_spaces_and_no_concept_names() -> None:
    assert model_text(["  Left\tlobe\n\n nodule ", None, "", "ＴＩ－ＲＡＤＳ　４类，"]) == (
        "Left lobe nodule TI-RADS 4类,"
    )
    assert model_text([" ", None]) is None
    sr = Dataset()
    findings, impression, nested = Dataset(), Dataset(), Dataset()
    for item, value in ((findings, "右叶结节"), (nested, "距被膜 1.2 mm"), (impression, "4类")):
        item.ValueType, item.TextValue = "TEXT", value
        concept = Dataset()
        concept.CodeMeaning = "Findings"
        item.ConceptNameCodeSequence = Sequence([concept])
    container = Dataset()
    container.ValueType = "CONTAINER"
    container.ContentSequence = Sequence([nested])
    sr.ContentSequence = Sequence([findings, container, impression])
    assert sr_model_text(sr) == "右叶结节 距被膜 1.2 mm 4类"  # document order, depth first


@pytest.mark.parametrize("language", ["en", "zh"])
def test_a_case_reads_the_same_for_training_and_over_dicom(
    language: str, zh_encoder: Path, tmp_path: Path
) -> None:
    options = PhantomOptions(rows=240, columns=320, report_language=language)  # type: ignore[arg-type]
    export_phantoms(tmp_path / "data", n=6, seed=23, options=options)
    patients = [p for p in read_patients(tmp_path / "data") if p.report_text is not None]
    assert len(patients) >= 4
    training = [p.report_text for p in patients]
    served = [
        received_text(tmp_path / "data" / "dicom" / p.case_id, tmp_path / "work" / p.case_id)
        for p in patients
    ]
    assert served == training
    assert not any(text.startswith("Findings") for text in served if text)
    encoder = TextEncoder(zh_encoder if language == "zh" else None, max_tokens=64)
    train_tokens, train_present = encoder.encode(training)
    served_tokens, served_present = encoder.encode(served)
    assert torch.equal(train_tokens, served_tokens) and torch.equal(train_present, served_present)
    assert bool(train_present.all())


# --- Chinese phantom reports -------------------------------------------------------------


def test_english_phantom_reports_are_as_they_were() -> None:
    digest = hashlib.sha256()
    for seed in range(40):
        digest.update(repr(make_case(seed, SMALL).report_text).encode())
    assert digest.hexdigest() == "d19cf5a2252e3358bd4780a0ed7ce2cf8863807f393114d7d3dedcbbc6a31f23"


def test_chinese_reports_say_what_the_english_ones_say_in_a_utf8_sr() -> None:
    zh_options = PhantomOptions(rows=240, columns=320, report_language="zh")
    seen = 0
    for index in range(12):
        seed = case_seed(3, index)
        english, chinese = make_case(seed, SMALL), make_case(seed, zh_options)
        assert (english.report_text is None) == (chinese.report_text is None)
        assert english.llnm_probability == chinese.llnm_probability
        if chinese.report_text is None or chinese.report_dataset is None:
            continue
        seen += 1
        text, level = chinese.report_text, chinese.tirads.level
        assert "甲状腺" in text and f"ACR TI-RADS {level}类" in text
        assert ("右叶" if chinese.lobe == "right" else "左叶") in text
        assert ("建议" in text) == ("FNA" in (english.report_text or ""))
        if chinese.shape == "taller-than-wide":
            assert "纵横比>1" in text
        sr = chinese.report_dataset
        assert sr.SpecificCharacterSet == "ISO_IR 192"
        assert english.report_dataset is not None
        assert english.report_dataset.SpecificCharacterSet == "ISO_IR 100"
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        assert text.encode("utf-8") in buffer.getvalue()
        back = dcmread(io.BytesIO(buffer.getvalue()))
        assert back.ContentSequence[0].TextValue == text
        assert str(back.StudyInstanceUID) != str(english.report_dataset.StudyInstanceUID)
    assert seen >= 8


def test_the_phantom_command_writes_chinese_reports(tmp_path: Path) -> None:
    result = runner.invoke(app, ["phantom", "--out", str(tmp_path), "--n", "3", "--rows", "240",
                                 "--columns", "320", "--report-language", "zh"])  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "dataset" / "manifest.json").read_text())
    assert manifest["options"]["report_language"] == "zh"
    reports = [p.report_text for p in read_patients(tmp_path) if p.report_text]
    assert reports and all("结节" in r for r in reports)


# --- the encoder on Chinese ----------------------------------------------------------------


def test_a_chinese_encoder_knows_chinese_reports_and_minilm_does_not(zh_encoder: Path) -> None:
    held_out = [model_text([make_case(case_seed(99, i), CHINESE).report_text]) for i in range(10)]
    texts = [t for t in held_out if t]
    chinese = TextEncoder(zh_encoder, max_tokens=50).token_counts(texts)
    english = TextEncoder(None, max_tokens=50).token_counts(texts)
    assert chinese.reports == len(texts) and chinese.tokens > 50 * len(texts)
    assert chinese.unknown_rate < 0.01
    assert english.unknown_rate > 0.3
    assert chinese.truncated == len(texts)  # a Chinese report is one token per character


def test_truncation_keeps_sep_and_whole_characters(zh_encoder: Path) -> None:
    encoder = TextEncoder(zh_encoder, max_tokens=16)
    text = "甲状腺右叶中部见一实性低回声结节，边界不清，内见微钙化，紧贴被膜。"
    ids = encoder.tokenizer([text], padding="max_length", truncation=True, max_length=16)
    tokens = encoder.tokenizer.convert_ids_to_tokens(ids["input_ids"][0])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[UNK]" not in tokens
    assert "".join(tokens[1:-1]) == text[:14]  # 14 whole characters, none cut
    embedded, present = encoder.encode([text, None])
    assert embedded.shape == (2, 16, 64) and present.tolist() == [True, False]
    assert bool(embedded[0].abs().sum(-1).gt(0).all()) and float(embedded[1].abs().sum()) == 0.0


# --- bundle ---------------------------------------------------------------------------------


def test_an_encoder_without_safetensors_weights_is_refused(
    zh_encoder: Path, tmp_path: Path
) -> None:
    source = tmp_path / "pickled"
    shutil.copytree(zh_encoder, source)
    (source / "model.safetensors").rename(source / "pytorch_model.bin")
    with pytest.raises(BundleError, match="safetensors"):
        include_text_encoder(tmp_path / "bundle", source)
    manifest = verify_bundle(DEMO_BUNDLE_DIR)
    assert text_encoder_folder(DEMO_BUNDLE_DIR, manifest) is None  # the packaged default
    outside = Manifest(**{**manifest.to_dict(), "text_encoder": {"folder": str(zh_encoder)}})
    with pytest.raises(BundleError, match="outside the bundle"):
        text_encoder_folder(DEMO_BUNDLE_DIR, outside)


def test_chinese_reports_train_travel_in_the_bundle_and_are_read_at_inference(
    zh_phantoms: Path, zh_encoder: Path, node_factory: Factory, tmp_path: Path
) -> None:
    encoder = shutil.copytree(zh_encoder, tmp_path / "bert-zh")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(zh_phantoms), "--out", str(run),
                                 "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.3",
                                 "--text-encoder", str(encoder),
                                 "--text-tokens", "64"])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["text_encoder"]["width"] == 64
    counts = metrics["text_encoder"]["report_tokens"]
    assert counts["reports"] >= 30 and counts["unknown_rate"] < 0.01

    bundle = tmp_path / "bundle"
    for component in ("nodule", "thyroid"):
        shutil.copytree(DEMO_BUNDLE_DIR / component, bundle / component)
    (bundle / "llnm").mkdir()
    for name in ("model.safetensors", "config.json", "metrics.json"):
        shutil.copyfile(run / name, bundle / "llnm" / name)
    sealed = runner.invoke(app, ["bundle", "seal", str(bundle), "--name", "zh", "--version", "1"])
    assert sealed.exit_code == 0, sealed.output
    shutil.rmtree(encoder)  # the sealed bundle carries its own copy
    manifest = verify_bundle(bundle)
    assert manifest.text_encoder is not None
    assert manifest.text_encoder["folder"] == TEXT_ENCODER_DIR
    assert {"text_encoder/config.json", "text_encoder/model.safetensors"} <= set(manifest.files)

    node = node_factory(model={"bundle_dir": bundle})
    case = make_case(case_seed(77, 0), CHINESE)
    assert case.report_dataset is not None
    detail = done_study(node, [*case.datasets, case.report_dataset], tmp_path / "case")
    assert detail.result is not None and detail.result.detail is not None
    assert detail.result.report_text_used is True
    tokens = detail.result.detail["report_tokens"]
    assert tokens["reports"] == 1 and tokens["unknown_rate"] < 0.01 and tokens["tokens"] > 50
    assert not [e for e in detail.events if e.kind == "report.unknown_tokens"]
    assert case.report_text is not None and case.report_text[:8] not in json.dumps(
        [e.detail for e in detail.events], ensure_ascii=False
    )  # counts only, never the text


def test_a_chinese_report_read_by_the_english_encoder_is_a_warning(
    node_factory: Factory, tmp_path: Path
) -> None:
    bundle = shutil.copytree(DEMO_BUNDLE_DIR, tmp_path / "english")  # all-MiniLM-L6-v2
    shutil.rmtree(bundle / "scope")  # its OOD gate would leave the study out: no prediction
    reseal_bundle(bundle)
    node = node_factory(model={"bundle_dir": bundle})
    case = make_case(case_seed(77, 1), CHINESE)
    assert case.report_dataset is not None
    detail = done_study(node, [*case.datasets, case.report_dataset], tmp_path / "case")
    (warning,) = [e for e in detail.events if e.kind == "report.unknown_tokens"]
    assert warning.level == "warning" and warning.detail is not None
    assert warning.detail["unknown_rate"] > 0.3
    assert detail.result is not None and detail.result.detail is not None
    assert detail.result.detail["report_tokens"]["unknown_rate"] == warning.detail["unknown_rate"]
