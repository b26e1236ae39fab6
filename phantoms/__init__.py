"""Synthetic thyroid ultrasound phantoms with known ground truth and LLNM labels.

``make_case(seed)`` gives one patient's study: transverse and longitudinal
B-mode images of one nodule as Ultrasound Image Storage datasets (burned-in
identifiers outside the image area, optional Sequence of Ultrasound
Regions), an optional Basic Text SR report, nodule and thyroid masks, the
true nodule-capsule distance, and an LLNM label drawn from a known
probability (:mod:`phantoms.labels`). ``export_phantoms`` writes a
DICOM study folder and a training data set (:mod:`phantoms.dataset_export`).
``PhantomOptions(site=SITE_PROFILES["site-b"])`` renders a case as another
hospital would (:mod:`phantoms.site_profile`: device, population, label
errors). ``shifted_options`` and ``make_variant`` give inputs a scope gate must
handle: the same case rendered with shifted gain, speckle or depth, and
out-of-scope studies (colour Doppler, split screen, no gland, extreme gain
or noise; :mod:`phantoms.out_of_scope`).

Modules: ``patient`` (identities), ``nodule`` (features, outline),
``anatomy`` (neck and views), ``speckle`` (B-mode formation),
``burned_text`` (screen layout), ``headers`` (DICOM), ``report`` (text),
``labels`` (risk model), ``case`` (assembly), ``dataset_export`` (files),
``out_of_scope`` (shifted and out-of-scope variants), ``site_profile``
(simulated sites), ``hostile`` (malformed data
set pieces for the listener's tests).
"""

from phantoms.case import ENCODINGS, ImageTruth, PhantomCase, PhantomOptions, make_case
from phantoms.dataset_export import ExportSummary, export_phantoms
from phantoms.labels import (
    RiskFactors,
    best_achievable_auc,
    llnm_probability,
    nodal_stage,
    roc_auc,
)
from phantoms.out_of_scope import VariantCase, make_variant, shifted_options
from phantoms.site_profile import DEFAULT_SITE, SITE_PROFILES, SiteProfile, site_profile

__all__ = [
    "DEFAULT_SITE",
    "ENCODINGS",
    "SITE_PROFILES",
    "ExportSummary",
    "ImageTruth",
    "PhantomCase",
    "PhantomOptions",
    "RiskFactors",
    "SiteProfile",
    "VariantCase",
    "best_achievable_auc",
    "export_phantoms",
    "llnm_probability",
    "make_case",
    "make_variant",
    "nodal_stage",
    "roc_auc",
    "shifted_options",
    "site_profile",
]
