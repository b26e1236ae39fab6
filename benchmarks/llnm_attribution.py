"""LLNM-Net attribution faithfulness: Shapley contributions against what the model uses.

The contributions are exact Shapley values of the eight input groups against the
"input unavailable" baseline (:mod:`models.llnm.shapley`). Four checks:

(i) deletion: per case, the groups are withheld cumulatively in attributed order
    (largest |phi| first) and in reverse; the area under the |logit change| curve
    (mean over the 8 steps) should be larger in attributed order (target: >= 90 %
    of the cases). Mean curves go to ``deletion.png``.
(ii) mean contribution per group, and the Pearson correlation of the contributions
    with each group's share of the valid tokens (what attention rollout returned:
    a high r means the numbers only count tokens).
(iii) chosen inputs: the training cases are relabelled from ``--chosen`` inputs
    only (sum of their z-scored per-patient summaries above its median); a tiny
    model trained briefly on them should rank those inputs first: on average (the
    largest mean contributions) and per case (the share of cases whose largest
    |phi| are the chosen inputs; a case near the mean of an input legitimately
    gets little from it, so this share is below 100 % even for a perfect model).
(iv) the same task with ``--withhold`` withheld by the model's config: that input
    must get 0 %.

(i) and (ii) use the bundle's LLNM-Net on the first ``--cases`` cases of
``--data``; (iii) and (iv) train on ``--train`` (default: the other cases of
``--data``) with every input withheld with probability 0.2 per batch (so the
baseline is a state the model knows) and explain the first ``--toy-cases`` cases.

Run::

    .venv/bin/llnm-node phantom --n 120 --out /tmp/attr-data --seed 97
    .venv/bin/llnm-node phantom --n 300 --out /tmp/attr-train --seed 98
    .venv/bin/python benchmarks/llnm_attribution.py --data /tmp/attr-data
        [--train /tmp/attr-train] [--bundle models/demo_bundle] [--cases 60]
        [--toy-cases 30] [--epochs 12] [--chosen echogenicity shape]
        [--withhold echogenicity] [--out benchmarks/out/attribution]
        (options on the same line)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from models.bundle import verify_bundle
from models.llnm.config import TMDLConfig
from models.llnm.dataset import FeatureTable, build_features, read_patients
from models.llnm.evaluation import roc_auc
from models.llnm.shapley import GROUPS, ShapleyValues, deletion_curves, shapley_values
from models.llnm.text import TextEncoder
from models.llnm.tmdl import TMDL, TMDLBatch, token_groups, withhold
from models.llnm.training import ReportTokens, make_batch, predict
from models.llnm.weights import load_tmdl

SUMMARISED = ("location", "texture", "margin", "echogenicity", "shape", "sex", "age")
PATIENTS_PER_STEP = 4  # patients explained per progress step


def summary(table: FeatureTable, name: str) -> NDArray[np.float64]:
    """(N,) one number per patient for an input: the mean over present views of its mean."""
    values = np.asarray(table.arrays[name], np.float64)
    if name in ("sex", "age"):
        return values
    if name == "shape":
        values = values[..., 0]  # aspect ratio - 1
    per_view = values.reshape(*values.shape[:2], -1).mean(axis=2)  # (N, V)
    present = table.arrays["view_mask"].astype(np.float64)
    return np.asarray((per_view * present).sum(1) / np.maximum(present.sum(1), 1.0))


def chosen_labels(table: FeatureTable, chosen: list[str]) -> NDArray[np.float64]:
    """1 where the sum of the chosen inputs' z-scored summaries exceeds its median."""
    score = np.zeros(len(table))
    for name in chosen:
        values = summary(table, name)
        score += (values - values.mean()) / max(float(values.std()), 1e-9)
    return (score > np.median(score)).astype(np.float64)


def explain_cases(
    model: TMDL,
    batch_of: Callable[[NDArray[np.int64]], TMDLBatch],
    count: int,
    label: str,
    progress: Progress,
) -> tuple[ShapleyValues, torch.Tensor, torch.Tensor]:
    """Shapley values and both deletion curves of the first ``count`` cases."""
    parts: list[tuple[ShapleyValues, torch.Tensor, torch.Tensor]] = []
    task = progress.add_task(label, total=count)
    for start in range(0, count, PATIENTS_PER_STEP):
        batch = batch_of(np.arange(start, min(start + PATIENTS_PER_STEP, count)))
        values = shapley_values(model, batch)
        parts.append((values, *deletion_curves(model, batch, values)))
        progress.advance(task, len(batch.sex))
    values = ShapleyValues(
        *(
            torch.cat([getattr(p[0], f) for p in parts])
            for f in ("phi", "players", "full", "baseline")
        )
    )
    return values, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


def token_shares(config: TMDLConfig, text: ReportTokens, rows: NDArray[np.int64]) -> torch.Tensor:
    """(N, G) each group's share of the valid tokens in percent, :data:`GROUPS` order."""
    lengths = {name: s.stop - s.start for name, s in token_groups(config).items()}
    counts = torch.tensor([[float(lengths[n]) for n in GROUPS]] * len(rows), dtype=torch.float64)
    index = torch.from_numpy(rows)
    report = (text.tokens[index].ne(0).any(dim=-1) & text.present[index, None]).sum(dim=1)
    counts[:, GROUPS.index("report")] = report.double()
    return 100.0 * counts / counts.sum(dim=1, keepdim=True)


def train_toy(
    config: TMDLConfig,
    table: FeatureTable,
    text: ReportTokens,
    labels: NDArray[np.float64],
    args: argparse.Namespace,
    progress: Progress,
) -> TMDL:
    """A model trained for ``--epochs`` on ``labels``, inputs withheld at random per batch."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = TMDL(config).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    target = torch.from_numpy(labels)
    task = progress.add_task(f"training ({', '.join(config.withheld) or 'nothing'} withheld)",
                             total=args.epochs)  # fmt: skip
    for _ in range(args.epochs):
        order = rng.permutation(len(table)).astype(np.int64)
        for start in range(0, len(order), 16):
            rows = order[start : start + 16]
            dropped = tuple(n for n in GROUPS if rng.random() < 0.2)
            batch = withhold(make_batch(table, text, rows), dropped)
            logit = model(batch).logit
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logit.double(), target[torch.from_numpy(rows)]
            )
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        progress.advance(task)
    return model.eval()


def areas(attributed: torch.Tensor, reverse: torch.Tensor) -> dict[str, float]:
    """Deletion-curve areas (mean over the steps) and how often attributed order wins."""
    first, last = attributed[:, 1:].mean(dim=1), reverse[:, 1:].mean(dim=1)
    return {
        "attributed_wins": float((first > last).double().mean()),
        "mean_area_attributed": float(first.mean()),
        "mean_area_reverse": float(last.mean()),
    }


def ranking(values: ShapleyValues) -> dict[str, float]:
    """Mean contribution (percent) per group, largest first."""
    mean = values.percent().mean(dim=0).tolist()
    return dict(sorted(zip(GROUPS, mean, strict=True), key=lambda kv: -kv[1]))


def plot_deletion(path: Path, attributed: torch.Tensor, reverse: torch.Tensor, title: str) -> None:
    """Mean |logit change| per deletion step, both orders."""
    figure = Figure(figsize=(6.0, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = np.arange(attributed.shape[1])
    axes.plot(
        steps,
        attributed.mean(dim=0).numpy(),
        marker="o",
        label="attributed order (largest |phi| first)",
    )
    axes.plot(steps, reverse.mean(dim=0).numpy(), marker="s", label="reverse order")
    axes.set_xlabel("input groups withheld")
    axes.set_ylabel("mean |logit change|")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    manifest = verify_bundle(args.bundle)
    model, config = load_tmdl(args.bundle / "llnm")
    reference = (manifest.text_encoder or {}).get("folder")
    encoder_folder = None if reference is None else Path(reference)
    patients = read_patients(args.data)
    cases = min(args.cases, len(patients))
    table = build_features(patients, config.image_size)
    text = ReportTokens.encode(
        table.reports, TextEncoder(encoder_folder, max_tokens=config.text_tokens)
    )
    toy = replace(
        TMDLConfig.preset("tiny", text_tokens=args.toy_text_tokens),
        bidirectional_blocks=1,
        self_attention_blocks=2,
    )
    toy_encoder = TextEncoder(encoder_folder, max_tokens=toy.text_tokens)
    toy = replace(toy, text_width=toy_encoder.width)
    evaluate = (
        table
        if toy.image_size == config.image_size
        else build_features(patients, toy.image_size, progress=False)
    )
    evaluate_text = ReportTokens.encode(evaluate.reports, toy_encoder)
    if args.train is None:
        train = evaluate.subset(np.arange(cases, len(evaluate), dtype=np.int64))
    else:
        train = build_features(read_patients(args.train), toy.image_size, progress=False)
    train_text = ReportTokens.encode(train.reports, toy_encoder)
    result: dict[str, Any] = {"bundle": str(args.bundle), "data": str(args.data), "cases": cases}
    with Progress(console=console) as progress:
        started = time.perf_counter()
        values, attributed, reverse = explain_cases(
            model, lambda rows: make_batch(table, text, rows), cases, "bundle model", progress
        )
        seconds = (time.perf_counter() - started) / cases
        shares = token_shares(config, text, np.arange(cases, dtype=np.int64))
        percent = values.percent()
        r = float(np.corrcoef(percent.flatten().numpy(), shares.flatten().numpy())[0, 1])
        result["bundle_model"] = {
            "seconds_per_case": seconds,
            "deletion": areas(attributed, reverse),
            "mean_contribution": ranking(values),
            "mean_token_share": dict(zip(GROUPS, shares.mean(dim=0).tolist(), strict=True)),
            "correlation_with_token_shares": r,
            "efficiency_max_error": float(
                (values.phi.sum(dim=1) - (values.full - values.baseline)).abs().max()
            ),
        }
        title = f"{manifest.name} {manifest.version} on {args.data.name}: {cases} cases"
        plot_deletion(args.out / "deletion.png", attributed, reverse, title)

        labels = chosen_labels(train, args.chosen)
        toy_cases = min(args.toy_cases, len(evaluate))
        for key, withheld in (("chosen_inputs", ()), ("withheld_input", (args.withhold,))):
            trained = train_toy(
                replace(toy, withheld=withheld), train, train_text, labels, args, progress
            )
            toy_values, toy_attributed, toy_reverse = explain_cases(
                trained, lambda rows: make_batch(evaluate, evaluate_text, rows), toy_cases,
                f"toy model, {key.replace('_', ' ')}", progress,
            )  # fmt: skip
            top = toy_values.phi.abs().topk(len(args.chosen), dim=1).indices.tolist()
            wanted = {GROUPS.index(n) for n in args.chosen if n not in withheld}
            mean = ranking(toy_values)
            probabilities, _ = predict(trained, train, train_text, torch.device("cpu"))
            result[key] = {
                "chosen": args.chosen,
                "training_auc": roc_auc(labels.astype(np.int64), probabilities),
                "withheld": list(withheld),
                "training_cases": len(train),
                "explained_cases": toy_cases,
                "mean_contribution": mean,
                "chosen_first_on_average": {GROUPS[i] for i in wanted}
                <= set(list(mean)[: len(wanted)]),
                "cases_with_chosen_on_top": float(np.mean([wanted <= set(row) for row in top])),
                "deletion": areas(toy_attributed, toy_reverse),
            }
    return result


def print_tables(result: dict[str, Any], console: Console) -> None:
    bundle = result["bundle_model"]
    deletion = bundle["deletion"]
    summary_table = Table(title=f"Deletion test, bundle model ({result['cases']} cases)")
    for column in ("attributed order wins", "mean area, attributed", "mean area, reverse",
                   "r with token shares", "s per case"):  # fmt: skip
        summary_table.add_column(column)
    summary_table.add_row(
        f"{100 * deletion['attributed_wins']:.1f} %",
        f"{deletion['mean_area_attributed']:.3f}",
        f"{deletion['mean_area_reverse']:.3f}",
        f"{bundle['correlation_with_token_shares']:.3f}",
        f"{bundle['seconds_per_case']:.2f}",
    )
    console.print(summary_table)
    groups = Table(title="Mean contribution per input group (%)")
    groups.add_column("group")
    groups.add_column("bundle model")
    groups.add_column("token share")
    toys = [k for k in ("chosen_inputs", "withheld_input") if k in result]
    for key in toys:
        withheld = ", ".join(result[key]["withheld"]) or "none"
        groups.add_column(f"toy, {withheld} withheld")
    for name in bundle["mean_contribution"]:
        groups.add_row(
            name,
            f"{bundle['mean_contribution'][name]:.1f}",
            f"{bundle['mean_token_share'][name]:.1f}",
            *(f"{result[k]['mean_contribution'][name]:.1f}" for k in toys),
        )
    console.print(groups)
    for key in toys:
        part = result[key]
        console.print(
            f"toy ({', '.join(part['withheld']) or 'nothing'} withheld; label from "
            f"{', '.join(part['chosen'])}; training AUC {part['training_auc']:.3f}): "
            "the chosen inputs on top "
            f"{'on average' if part['chosen_first_on_average'] else 'NOT on average'} and in "
            f"{100 * part['cases_with_chosen_on_top']:.0f} % of {part['explained_cases']} cases; "
            f"deletion wins {100 * part['deletion']['attributed_wins']:.0f} %"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=Path("models/demo_bundle"))
    parser.add_argument("--train", type=Path, default=None, help="default: --data's other cases")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/attribution"))
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--toy-cases", type=int, default=30)
    parser.add_argument("--toy-text-tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--chosen", nargs="+", default=["sex", "age"], choices=SUMMARISED)
    parser.add_argument("--withhold", default="sex", choices=GROUPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console()
    result = run(args, console)
    print_tables(result, console)
    (args.out / "attribution.json").write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out / 'attribution.json'} and {args.out / 'deletion.png'}")


if __name__ == "__main__":
    main()
