"""The patient's identifiers, gathered from the study's headers, and matchers for them.

Header cleaning removes kept text values that contain one; the report text has
every occurrence redacted (:mod:`pipeline.deidentify.model_inputs`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydicom import Dataset

from pipeline.deidentify.values import text_values


def patient_identifiers(datasets: Iterable[Dataset]) -> frozenset[str]:
    """Name parts, IDs, accession numbers and birth dates of the patient, as text."""
    found: set[str] = set()
    keywords = (
        "PatientName",
        "OtherPatientNames",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientID",
        "OtherPatientIDs",
        "AccessionNumber",
        "PatientBirthDate",
        "MedicalRecordLocator",
        "AdmissionID",
    )
    for dataset in datasets:
        for keyword in keywords:
            for text in text_values(dataset.get(keyword)):
                found.add(text)
                if keyword.endswith(("Name", "Names")):
                    found.update(p for p in re.split(r"[\^=\s,]+", text) if len(p) >= 2)
        for item in dataset.get("OtherPatientIDsSequence", []):
            found.update(text_values(item.get("PatientID")))
    for text in list(found):
        if re.fullmatch(r"\d{8}", text):
            y, m, d = text[:4], text[4:6], text[6:]
            found.update({f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}"})
            found.update({f"{m}/{d}/{y}", f"{d}-{m}-{y}", f"{y}.{m}.{d}"})
    # Shorter values (an accession number "7") cannot be told from ordinary text.
    return frozenset(t for t in found if len(t) >= 3 or (len(t) == 2 and t.isalpha()))


def identifier_pattern(identifiers: frozenset[str], *, loose: bool) -> re.Pattern[str] | None:
    """Case-insensitive matcher for the identifiers, longest first.

    Identifiers match as whole words; with ``loose``, those of four or more
    characters match anywhere (for attribute values, where removing too much
    costs little).
    """
    if not identifiers:
        return None
    alternatives = []
    for token in sorted(identifiers, key=len, reverse=True):
        word = re.escape(token)
        if not (loose and len(token) >= 4):
            word = rf"(?<![A-Za-z0-9]){word}(?![A-Za-z0-9])"
        alternatives.append(word)
    return re.compile("|".join(alternatives), re.IGNORECASE)
