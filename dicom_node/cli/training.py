"""``llnm-node phantom``, ``train-seg``, ``train`` and ``evaluate``: data sets and models."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dicom_node.cli.common import console, fail

if TYPE_CHECKING:
    from models.training_loop import TrainResult


class ReportLanguageOption(StrEnum):
    """The phantom reports' language (:data:`phantoms.report.REPORT_LANGUAGES`)."""

    en = "en"
    zh = "zh"


def phantom(
    out: Annotated[Path, typer.Option(help="Write dicom/ and dataset/ under this folder.")],
    n: Annotated[int, typer.Option(min=1, help="Number of cases (studies).")] = 200,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the run; same seed, same files.")] = 0,
    rgb: Annotated[bool, typer.Option("--rgb", help="RGB images instead of MONOCHROME2.")] = False,
    regions: Annotated[
        bool, typer.Option("--regions/--no-regions", help="Sequence of Ultrasound Regions.")
    ] = True,
    rows: Annotated[int, typer.Option(min=120)] = 480,
    columns: Annotated[int, typer.Option(min=160)] = 640,
    report_language: Annotated[
        ReportLanguageOption,
        typer.Option(help="Language of the reports: en (English) or zh (Simplified Chinese)."),
    ] = ReportLanguageOption.en,
    site_profile: Annotated[
        str,
        typer.Option(
            help="Simulated site (phantoms.site_profile.SITE_PROFILES): default, or e.g. "
            "site-b (another device and population, noisy labels)."
        ),
    ] = "default",
) -> None:
    """Write synthetic thyroid ultrasound studies and a training data set (NOT FOR CLINICAL USE)."""
    from phantoms import PhantomOptions, export_phantoms
    from phantoms import site_profile as find_site

    try:
        site = find_site(site_profile)
    except ValueError as exc:
        raise fail("invalid --site-profile", exc, code=2) from exc
    options = PhantomOptions(
        rgb=rgb,
        with_regions=regions,
        rows=rows,
        columns=columns,
        report_language=report_language.value,
        site=site,
    )
    summary = export_phantoms(out, n=n, seed=seed, options=options, progress=True)
    auc = summary.best_achievable_auc
    console.print(
        f"{summary.cases} studies in {summary.dicom_dir}, data set in {summary.dataset_dir}; "
        f"{summary.positives} LLNM-positive, {summary.reports} with a report; "
        f"best achievable AUC {'n/a' if auc is None else f'{auc:.3f}'}"
        + ("" if site_profile == "default" else f"; site profile {site_profile}")
    )


Epochs = Annotated[int, typer.Option(min=1, help="Total epochs (also when resuming).")]
BatchSize = Annotated[int, typer.Option(min=1)]
ValFraction = Annotated[float, typer.Option(min=0.01, max=0.99)]
Patience = Annotated[int, typer.Option(min=1, help="Stop after N epochs without gain.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.")]
Half = Annotated[bool, typer.Option("--half", help="Keep the weights as float16.")]


def _run(
    epochs: int,
    batch_size: int,
    seed: int,
    val_fraction: float,
    patience: int,
    learning_rate: float,
    half: bool,
    resume: bool,
) -> dict[str, Any]:
    """The options every trainer shares (:class:`models.training_loop.LoopOptions`)."""
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "val_fraction": val_fraction,
        "patience": patience,
        "learning_rate": learning_rate,
        "half_weights": half,
        "resume": resume,
    }


def _print_result(result: TrainResult, score: str) -> None:
    stopped = " (stopped early)" if result.stopped_early else ""
    console.print(
        f"best validation {score} {result.best_score:.4f} at epoch {result.best_epoch} "
        f"of {result.epochs_run}{stopped}; run in {result.out}"
    )


class SegTarget(StrEnum):
    """What ``train-seg`` can train: the thyroid (UNet++) or the nodules (YOLOv8-seg)."""

    thyroid = "thyroid"
    nodule = "nodule"


def train_seg(
    target: Annotated[SegTarget, typer.Argument(help="thyroid: UNet++; nodule: YOLOv8n-seg.")],
    data: Annotated[Path, typer.Option(help="Data set folder holding cases.jsonl (or dataset/).")],
    out: Annotated[Path, typer.Option(help="Write weights, metrics, curve, checkpoint here.")],
    epochs: Epochs = 30,
    batch_size: BatchSize = 8,
    seed: Annotated[int, typer.Option(min=0, help="Seeds the split, init and augmentation.")] = 0,
    val_fraction: ValFraction = 0.2,
    patience: Patience = 6,
    height: Annotated[int, typer.Option(min=32, help="Input height, multiple of 32.")] = 256,
    width: Annotated[int, typer.Option(min=32, help="Input width, multiple of 32.")] = 320,
    resume: Resume = False,
    learning_rate: Annotated[float, typer.Option(min=1e-6, help="AdamW learning rate.")] = 1e-3,
    half: Half = False,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Fine-tune: start from this bundle's segmenter of TARGET (or a segmenter "
            "folder), keeping its configuration (--height and --width do not apply)."
        ),
    ] = None,
) -> None:
    """Train a segmenter (CPU or CUDA) on a data set folder; NOT FOR CLINICAL USE as is."""
    from models.bundle import MANIFEST_FILE
    from models.segmentation.config import AnyConfig, SegmenterConfig, YoloSegConfig
    from models.segmentation.training import TrainOptions, train_segmenter
    from models.segmentation.weights import load_segmenter

    try:
        if init_from is not None and (init_from / MANIFEST_FILE).is_file():
            init_from = init_from / target.value
        config: AnyConfig = (
            load_segmenter(init_from).config
            if init_from is not None
            else SegmenterConfig(input_height=height, input_width=width)
            if target is SegTarget.thyroid
            else YoloSegConfig(input_height=height, input_width=width)
        )
        run = _run(epochs, batch_size, seed, val_fraction, patience, learning_rate, half, resume)
        options = TrainOptions(**run, init_from=init_from)
        result = train_segmenter(data, out, config, options)
    except (FileNotFoundError, ValueError) as exc:
        raise fail("cannot train", exc) from exc
    _print_result(result, "Dice")


def train(
    data: Annotated[Path, typer.Option(help="Data set folder holding cases.csv (or dataset/).")],
    out: Annotated[Path, typer.Option(help="Run folder: weights, metrics, plots, checkpoint.")],
    size: Annotated[str, typer.Option(help="Model size preset: tiny or base.")] = "tiny",
    epochs: Epochs = 40,
    batch_size: BatchSize = 16,
    seed: Annotated[int, typer.Option(min=0, help="Seeds the split, init and shuffling.")] = 0,
    val_fraction: ValFraction = 0.2,
    patience: Patience = 10,
    learning_rate: Annotated[float, typer.Option(min=1e-7)] = 3e-4,
    text_encoder: Annotated[
        Path | None, typer.Option(help="Local BERT-family folder; default all-MiniLM-L6-v2.")
    ] = None,
    text_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Report tokens kept (default: the preset's 50, as the paper)."),
    ] = None,
    half: Half = False,
    resume: Resume = False,
    withhold: Annotated[
        list[str] | None,
        typer.Option(help="Ablation: an input the model never sees (repeatable), e.g. report."),
    ] = None,
    input_dropout: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=0.99, help="Probability each non-report input is withheld (default 0.1)."
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Fine-tune: start from this bundle's LLNM-Net (or an LLNM-Net folder), keeping "
            "its architecture and text encoder."
        ),
    ] = None,
) -> None:
    """Train LLNM-Net (TMDL); the kept epoch is the one with the best validation AUC.

    With --init-from the start's architecture and text encoder are kept: --size,
    --text-tokens, --withhold, --input-dropout and --text-encoder do not apply.
    """
    from models.bundle import BundleError
    from models.llnm.config import TMDLConfig
    from models.llnm.training import TMDLTrainOptions, fine_tune_start, train_tmdl

    try:
        start = None
        if init_from is not None:
            start, config, text_encoder = fine_tune_start(init_from)
        else:
            config = TMDLConfig.preset(
                size,
                withheld=tuple(withhold or ()),
                text_tokens=text_tokens,
                input_dropout=input_dropout,
            )
        run = _run(epochs, batch_size, seed, val_fraction, patience, learning_rate, half, resume)
        options = TMDLTrainOptions(**run, text_encoder=text_encoder, init_from=start)
        result = train_tmdl(data, out, config, options)
    except (FileNotFoundError, ValueError, BundleError) as exc:
        raise fail("cannot train", exc) from exc
    _print_result(result, "AUC")


def evaluate(
    model: Annotated[Path, typer.Option(help="Folder with model.safetensors + config.json.")],
    data: Annotated[Path, typer.Option(help="Data set folder holding cases.csv (or dataset/).")],
    out: Annotated[Path, typer.Option(help="Write evaluation.json, predictions and plots here.")],
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.5,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    text_encoder: Annotated[Path | None, typer.Option(help="Local BERT-family folder.")] = None,
    segment_with: Annotated[
        Path | None,
        typer.Option(
            help="Bundle whose segmenters and scope gate run the node's whole chain from each "
            "patient's DICOM study (study_dir column); default: the data set's masks."
        ),
    ] = None,
) -> None:
    """Evaluate LLNM-Net: metrics with 95% bootstrap CIs, risk stage, ROC/calibration/DCA."""
    from imaging.errors import StageError
    from models.llnm.assessment import AssessOptions, assess

    options = AssessOptions(
        threshold=threshold, resamples=resamples, seed=seed, text_encoder=text_encoder
    )
    try:
        if segment_with is None:
            result = assess(model, data, out, options)
        else:
            from pipeline.chain_assessment import assess_through_chain

            result = assess_through_chain(model, segment_with, data, out, options)
    except (FileNotFoundError, ValueError, RuntimeError, StageError) as exc:
        raise fail("cannot evaluate", exc) from exc
    console.print(
        f"masks: {result['masks']}; {result['assessed']} of {result['patients']} patients assessed"
    )
    for name, estimate in result["metrics"].items():
        value, low, high = estimate["value"], estimate["low"], estimate["high"]
        console.print(f"{name:12s} {value:.3f}  (95% CI {low:.3f}-{high:.3f})")
    if result["best_achievable_auc"] is not None:
        console.print(f"best achievable AUC {result['best_achievable_auc']:.3f}")
    not_assessed = result["not_assessed"]
    if not_assessed["count"]:
        console.print(
            f"not assessed {not_assessed['count']} {not_assessed['outcomes']}; AUC over all "
            f"patients with them at 0.5: {not_assessed['all_cases_auc']:.3f}"
        )
    stage = result["risk_stage"]
    if stage is not None:
        head, banding = stage["head"], stage["banding"]
        console.print(
            f"risk stage (serves {stage['served']['method']}): head agreement "
            f"{head['exact_agreement']:.3f}, mean one-vs-rest AUC {head['auc']['mean']:.3f}; "
            f"banding at {banding['cut_points'][0]:.2f}/{banding['cut_points'][1]:.2f} "
            f"agreement {banding['exact_agreement']:.3f}, AUC {banding['auc']['mean']:.3f}"
        )
    console.print(f"written to {out}")
