"""Coded concepts of the node's Structured Reports.

Standard codes come from pydicom's code dictionary (``codes.DCM``,
``codes.SCT``, ``codes.UCUM``; checked against it, not typed from memory).
Concepts with no standard code use the private coding scheme
:data:`SCHEME` ("99LLNM"), declared in every SR's Coding Scheme
Identification Sequence (:data:`SCHEME_IDENTIFICATION`).
"""

from __future__ import annotations

from types import MappingProxyType

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from imaging.identity import MANUFACTURER

SCHEME = "99LLNM"
SCHEME_IDENTIFICATION = CodingSchemeIdentificationItem(
    designator=SCHEME,
    name="LLNM node private concepts",
    responsible_organization=MANUFACTURER,
)
# IHE AI Results (AIR, Rev. 1.1, Trial Implementation) names the algorithm in Contributing
# Equipment with this purpose of reference, pending a DICOM code for it.
IHE_SCHEME_IDENTIFICATION = CodingSchemeIdentificationItem(
    designator="99IHE",
    name="IHE Radiology Technical Framework codes",
    responsible_organization="IHE International",
)
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")
DCM_PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment  # DCM 109102, CID 7005


def _private(value: str, meaning: str) -> Code:
    return Code(value=value, scheme_designator=SCHEME, meaning=meaning)


# Document structure.
PROCEDURE = codes.SCT.ImagingProcedure  # SCT 363679005, in CID 100
# TID 1500 row "Qualitative Evaluations" container (not in pydicom's dictionary).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
RESULT = codes.DCM.Comment  # DCM 121106: the one-line result caption (TEXT)
DEVICE = codes.DCM.Device  # DCM 121007, the observer type
ORIGINAL_SOURCE = codes.DCM.OriginalSource  # DCM 111040: the image an outline lies on
ANALYSIS_FAILED = _private("FAILED", "LLNM analysis failed")  # failure SR title
NO_NODULE_FOUND = _private("NO-NODULE", "LLNM analysis: no nodule found")  # its SR title
NOT_ASSESSED = _private("NOT-ASSESSED", "LLNM analysis: not assessed")  # its SR title

# The prediction. Viewers show a measurement group's first numeric values beside its
# outline, so the study-level prediction rides in each nodule's group, probability
# first; the verdict and the stage are coded values, never a bare "Metastasis".
PROBABILITY = _private("LLNM-PROB", "LLNM probability")
THRESHOLD = codes.DCM.ThresholdValue  # DCM 122411
PREDICTION = _private("PREDICTION", "LLNM prediction")
POSITIVE = codes.SCT.Positive  # SCT 10828004
NEGATIVE = codes.SCT.Negative  # SCT 260385009
RISK_STAGE = _private("RISK-STAGE", "LLNM risk stage")
STAGE = MappingProxyType(
    {1: codes.SCT.Stage1, 2: codes.SCT.Stage2, 3: codes.SCT.Stage3}  # SCT 258215001 ...
)
REPORT_TEXT_USED = _private("REPORT-TEXT", "Report text used")
YES = codes.SCT.Yes  # SCT 373066001
NO = codes.SCT.No  # SCT 373067005

# Share of each model input in the prediction (|Shapley value| of the input group against
# the "input unavailable" baseline, percent of the sum), in the order of
# models.llnm.explain.CONTRIBUTION_GROUPS (not imported: it pulls in torch).
CONTRIBUTION_GROUPS = (
    "location", "texture", "margin", "echogenicity", "shape", "report", "sex", "age",
)  # fmt: skip
CONTRIBUTION = MappingProxyType(
    {g: _private(f"C-{g.upper()}", f"Contribution: {g}") for g in CONTRIBUTION_GROUPS}
)

# Per view: the index nodule.
THYROID_NODULE = codes.SCT.ThyroidNodule  # SCT 237495005
THYROID = codes.SCT.Thyroid  # SCT 69748006, when the lobe is unknown
LOBE = MappingProxyType(
    {"right": codes.SCT.RightLobeOfThyroid, "left": codes.SCT.LeftLobeOfThyroid}
)
THIRD = MappingProxyType(
    {
        "upper": codes.SCT.Superior,  # SCT 264217000
        "middle": codes.NCIt.Middle,  # NCIt C25569
        "lower": codes.SCT.Inferior,  # SCT 261089000
    }
)
LONG_AXIS = codes.SCT.LongAxis  # SCT 103339001: the nodule's length
SHORT_AXIS = codes.SCT.ShortAxis  # SCT 103340004: its width, perpendicular to it
# Shortest distance from the nodule to the gland's capsule.
CAPSULE_DISTANCE = _private("CAPSULE-DIST", "Capsule distance")
# Mean grey level inside the nodule minus that of the gland around it.
ECHOGENICITY_DIFFERENCE = _private("ECHO-DIFF", "Echogenicity diff")
TALLER_THAN_WIDE = _private("TALLER-WIDE", "Taller-than-wide")
IMAGE_VIEW = codes.DCM.ImageView  # DCM 111031
PLANE = MappingProxyType(
    {"transverse": codes.SCT.Transverse, "longitudinal": codes.SCT.Longitudinal}
)

# Per view: where the index nodule sits on the bundle's population location risk map.
POPULATION_RISK = _private("POP-RISK", "Pop. location risk")  # LLNM rate there, %
POPULATION_REGION = _private("POP-REGION", "Population map region")
POPULATION_REGIONS = MappingProxyType(
    {
        **THIRD,
        "lateral": codes.SCT.Lateral,  # SCT 49370004
        "central": codes.SCT.Central,  # SCT 26216008
        "medial": codes.SCT.Medial,  # SCT 255561001
    }
)

# Units (UCUM; curly braces are UCUM annotations of a dimensionless unit).
PERCENT = codes.UCUM.Percent  # "%"
MILLIMETRE = codes.UCUM.Millimeter  # "mm"
PIXELS = Code(value="{pixels}", scheme_designator="UCUM", meaning="pixels")
GREY_LEVELS = Code(value="{grey levels}", scheme_designator="UCUM", meaning="grey levels")
