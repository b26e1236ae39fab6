"""A bundle's model card, generated from its manifest: what it is for, how good, how made.

Sections: identity and intended use (with the clinical-use label), lineage
(created, device UID, parent bundle where the manifest names one, text
encoder), training data (per component: cases, views, class balance;
synthetic or not; a site recalibration or fine-tuning), validation metrics
with 95 % confidence intervals, the scope gate's thresholds, the population risk
map, and known limitations.

Intervals are computed from what the manifest records: the LLNM AUC's by
Hanley & McNeil (1982) from the AUC and the validation class counts;
sensitivity, specificity, PPV and NPV's by Wilson's score interval on the
counts they imply. The limitations follow from the manifest (synthetic
data, the text encoder's language, no site calibration, the risk map's case
counts) and from what the node does by design (one index nodule per view).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.bundle import MANIFEST_FILE, NOT_FOR_CLINICAL_USE, BundleError, Manifest, device_uid
from models.risk_map import RISK_MAP_DIR, SUMMARY_FILE

Z95 = 1.959964


@dataclass(frozen=True)
class CardSection:
    """One titled section: rows of (label, value)."""

    title: str
    rows: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ModelCard:
    """The card of one bundle."""

    title: str
    label: str | None  # NOT FOR CLINICAL USE for a synthetic bundle
    sections: tuple[CardSection, ...]

    def markdown(self) -> str:
        """The card as Markdown (one table per section)."""
        lines = [f"# {self.title}", ""]
        if self.label:
            lines += [f"**{self.label}**", ""]
        for section in self.sections:
            lines += [f"## {section.title}", "", "| | |", "|---|---|"]
            lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in section.rows]
            lines.append("")
        return "\n".join(lines)


def auc_interval(auc: float, positives: int, negatives: int) -> tuple[float, float]:
    """Hanley & McNeil's 95 % interval of an AUC from the class counts."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    half = Z95 * math.sqrt(max(variance, 0.0))
    return max(auc - half, 0.0), min(auc + half, 1.0)


def wilson_interval(successes: float, total: int) -> tuple[float, float]:
    """Wilson's 95 % score interval of a proportion."""
    if total <= 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + Z95**2 / (2 * total)) / (1 + Z95**2 / total)
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95**2 / (4 * total**2)) / (1 + Z95**2 / total)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def _ci(value: float, interval: tuple[float, float]) -> str:
    return f"{value:.3f} (95 % CI {interval[0]:.3f}-{interval[1]:.3f})"


def _llnm_metrics(metrics: dict[str, Any], split: dict[str, Any]) -> list[tuple[str, str]]:
    best = metrics.get("best_val_metrics") or {}
    balance = split.get("val_balance") or {}
    positives, negatives = int(balance.get("positive", 0)), int(balance.get("negative", 0))
    rows = []
    if "auc" in best and positives and negatives:
        auc = float(best["auc"])
        rows.append(("LLNM AUC (validation)", _ci(auc, auc_interval(auc, positives, negatives))))
    sens, spec = best.get("sensitivity"), best.get("specificity")
    if sens is not None and spec is not None and positives and negatives:
        tp, tn = sens * positives, spec * negatives
        fp, fn = negatives - tn, positives - tp
        threshold = metrics.get("threshold", 0.5)
        rows += [
            (f"Sensitivity at {threshold}", _ci(sens, wilson_interval(tp, positives))),
            (f"Specificity at {threshold}", _ci(spec, wilson_interval(tn, negatives))),
        ]
        if tp + fp > 0:
            rows.append(("PPV", _ci(tp / (tp + fp), wilson_interval(tp, round(tp + fp)))))
        if tn + fn > 0:
            rows.append(("NPV", _ci(tn / (tn + fn), wilson_interval(tn, round(tn + fn)))))
    stage = (metrics.get("risk_stage") or {}).get("validation") or {}
    head = stage.get("head") or {}
    if "exact_agreement" in head:
        cases = int(stage.get("cases", 0))
        agreement = float(head["exact_agreement"])
        rows.append(
            (
                "Risk stage exact agreement",
                _ci(agreement, wilson_interval(agreement * cases, cases))
                + f", {cases} cases, served by {metrics['risk_stage'].get('method', '?')}",
            )
        )
    return rows


def _segmenter_metrics(
    name: str, metrics: dict[str, Any], split: dict[str, Any]
) -> list[tuple[str, str]]:
    rows = []
    if "best_val_dice" in metrics:
        views = split.get("val_views", "?")
        rows.append(
            (
                f"{name.capitalize()} segmenter (validation, {views} views)",
                f"Dice {metrics['best_val_dice']:.3f}, IoU {metrics.get('best_val_iou', 0):.3f}",
            )
        )
    return rows


def _parent(parent: Any) -> str:
    if not isinstance(parent, dict):
        return "none: trained from scratch"
    return (
        f"{parent.get('name')} {parent.get('version')} "
        f"(manifest SHA-256 {str(parent.get('manifest_sha256', ''))[:16]}...)"
    )


def _training_rows(training: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("Synthetic", "yes: phantoms only" if training.get("synthetic") else "no")]
    site = training.get("site_calibration")
    if isinstance(site, dict):
        rows.append(
            (
                "Site recalibration",
                f"{site.get('method')} on {site.get('cases')} site cases "
                f"({site.get('positives')} LLNM-positive), threshold {site.get('threshold')}",
            )
        )
    for name, run in (training.get("fine_tuned") or {}).items():
        score = run.get("best_val_auc", run.get("best_val_dice"))
        kind = "AUC" if "best_val_auc" in run else "Dice"
        rows.append(
            (
                "Site fine-tuning",
                f"{name}: best validation {kind} {score:.3f} at epoch {run.get('best_epoch')} "
                f"(started from the parent's weights)",
            )
        )
    for name, component in (training.get("components") or {}).items():
        split = component.get("split") or {}
        if "train_patients" in split:
            balance = split.get("train_balance") or {}
            text = (
                f"{split['train_patients']} training and {split.get('val_patients', '?')} "
                f"validation patients; training {balance.get('positive', '?')} LLNM-positive, "
                f"{balance.get('negative', '?')} negative"
            )
        else:
            text = (
                f"{split.get('train_cases', '?')} training cases ({split.get('train_views', '?')} "
                f"views), {split.get('val_cases', '?')} validation cases"
            )
        rows.append((name, text))
    return rows


def _scope_rows(scope: dict[str, Any]) -> list[tuple[str, str]]:
    if not scope:
        return [("Scope gate", "no fitted statistics: only the rule-based checks run")]
    limits, ood = scope.get("limits") or {}, scope.get("ood") or {}
    rows = []
    for name, limit in limits.items():
        value = (
            f"{limit['low']:.3f}-{limit['high']:.3f}" if isinstance(limit, dict) else f">= {limit}"
        )
        rows.append((name.replace("_", " ").capitalize(), value))
    image = ood.get("image") or {}
    parts = ", ".join(f"{p['name']} {p['threshold']}" for p in image.get("parts", []))
    if parts:
        rows.append((f"Image OOD thresholds ({image.get('percentile')} pct.)", parts))
    llnm = ood.get("llnm") or {}
    if "threshold" in llnm:
        rows.append(
            (f"LLNM-Net OOD threshold ({llnm.get('percentile')} pct.)", str(llnm["threshold"]))
        )
    return rows


def _risk_map_rows(summary: dict[str, Any] | None) -> list[tuple[str, str]]:
    if summary is None:
        return [("Population risk map", "none in this bundle")]
    rows = [("Built from", f"{summary['cases']} cases, {summary['positives']} LLNM-positive")]
    for key, entry in summary.get("maps", {}).items():
        rows.append(
            (
                f"Map {key}",
                f"{entry['cases']} cases; registration Dice median {entry['dice'].get('median')}",
            )
        )
    return rows


def limitations(manifest: Manifest, risk_map: dict[str, Any] | None) -> list[str]:
    """What the card warns about (module docstring)."""
    notes = []
    if manifest.training_data.get("synthetic"):
        notes.append(
            "Trained and validated on synthetic phantoms only: its numbers say nothing about "
            "patients. Validate on the site's own outcomes before any use."
        )
    encoder = manifest.text_encoder or {}
    if "MiniLM" in str(encoder.get("name", "")):
        notes.append(
            "The report text encoder is English (all-MiniLM-L6-v2): reports in other "
            "languages need a bundle with an encoder for them."
        )
    if "site_calibration" not in manifest.training_data:
        notes.append("Not recalibrated on any site's data.")
    notes.append("One index nodule per view (the largest) is assessed; others are listed only.")
    if risk_map is not None:
        notes.append(
            f"The population risk map rests on {risk_map['cases']} cases; a single lobe's map "
            "has about half of them behind each value."
        )
    return notes


def model_card(manifest: Manifest, risk_map: dict[str, Any] | None = None) -> ModelCard:
    """The card of the bundle whose manifest is ``manifest`` (module docstring).

    ``risk_map`` is the bundle's risk map summary (``risk_map/risk_map.json``), if any.
    """
    training = manifest.training_data
    components = training.get("components") or {}
    metrics = manifest.metrics
    label = NOT_FOR_CLINICAL_USE if training.get("synthetic") is not False else None
    encoder = manifest.text_encoder or {}
    lineage = [
        ("Created", manifest.created),
        ("Device UID", device_uid(manifest.name, manifest.version, manifest.files)),
        ("Parent bundle", _parent(training.get("parent"))),
        ("Text encoder", str(encoder.get("name") or encoder.get("folder") or "none")),
        ("Files", f"{len(manifest.files)}, each with its SHA-256 in the manifest"),
    ]
    measured = _llnm_metrics(
        metrics.get("llnm") or {}, (components.get("llnm") or {}).get("split") or {}
    )
    for name in ("nodule", "thyroid"):
        measured += _segmenter_metrics(
            name, metrics.get(name) or {}, (components.get(name) or {}).get("split") or {}
        )
    sections = (
        CardSection("Intended use", (("Intended use", manifest.intended_use),)),
        CardSection("Lineage", tuple(lineage)),
        CardSection("Training data", tuple(_training_rows(training))),
        CardSection("Validation metrics", tuple(measured)),
        CardSection("Scope gate", tuple(_scope_rows(metrics.get("scope") or {}))),
        CardSection("Population risk map", tuple(_risk_map_rows(risk_map))),
        CardSection(
            "Known limitations",
            tuple((str(n), text) for n, text in enumerate(limitations(manifest, risk_map), 1)),
        ),
    )
    return ModelCard(title=f"{manifest.name} {manifest.version}", label=label, sections=sections)


def bundle_card(folder: Path) -> ModelCard:
    """The card of the bundle in ``folder``, from its manifest and risk map summary.

    Raises
    ------
    BundleError
        If the manifest or the risk map summary cannot be read.
    """
    try:
        manifest = Manifest(**json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8")))
        summary_path = folder / RISK_MAP_DIR / SUMMARY_FILE
        summary = (
            json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
        )
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"{folder} has no readable manifest: {exc}") from exc
    return model_card(manifest, summary)
