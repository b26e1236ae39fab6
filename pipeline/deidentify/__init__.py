"""De-identification: the PS3.15 Basic Application Level Confidentiality Profile on a working copy.

Every ultrasound image intake passed on is read from the spool, cleaned and
written as a new Part 10 file under ``work_dir / "deid"``; the spool is never
touched. Only these copies, the model inputs (age, sex, redacted report text)
and counts leave this stage; the pseudonym map goes to the job database
(:func:`~.stage.keep_pseudonyms`) and never downstream.

Attributes (Table E.1-1, :mod:`pipeline.deidentify.confidentiality_profile`)
    ``X`` removes; ``Z`` leaves a zero-length value (an empty sequence for SQ);
    ``D`` puts a dummy of the VR (``ANONYMIZED`` for text and names, 0 for
    numbers, 19000101 / 000000 for dates and times; a sequence keeps its items,
    each cleaned by the same rules); ``K`` keeps (a sequence's items are
    cleaned); ``U`` replaces every UID value (see below); ``C`` (clean, only in
    the option columns) shifts dates under the Modified Dates option and
    otherwise removes, since no value is known to be safe. Compound actions
    name what an IOD may require instead of removal; intake passes on only
    ultrasound and secondary-capture images, where none of these attributes is
    Type 1 or 2 (Acquisition DateTime is 1C, and zero-length is not allowed
    there), so ``X/Z``, ``X/D`` and ``X/Z/D`` remove; ``Z/D`` (Content Date and
    Time: Type 2C) gives a zero-length value; ``X/Z/U*`` keeps the sequence and
    cleans its items, so its UIDs are replaced consistently and references
    between the study's images stay valid.
Beyond the table (safety nets)
    Private attributes (odd groups) are removed, and so are curves
    ``(50xx,eeee)``, overlays ``(60xx,eeee)``, group lengths, command and file
    meta elements (the file meta is rebuilt), Encrypted Attributes and MAC
    Parameters, and elements whose VR is unknown (``UN``): they cannot be
    inspected. Person names (PN) and dates and times (DA, DT, TM) that the
    table does not list are handled like listed ones (PN removed; dates
    removed, or shifted/kept under the longitudinal options). Other UIDs that
    are not DICOM-defined (root 1.2.840.10008) are replaced too. Finally any
    kept text value that contains one of the patient's identifiers (name
    parts, IDs, accession number, birth date) is removed.
UIDs
    A new UID is ``2.25.<n>`` where ``n`` is a version-4-shaped UUID made from
    HMAC-SHA256(salt, original UID): the same original gets the same new UID
    in every instance of the study, including references inside sequences.
    The salt is drawn afresh for every run unless
    :attr:`DeidentificationOptions.secret` is set; the pairs are kept in the
    pseudonym map. Patient ID and Accession Number (``Z``) get dummy values
    derived the same way (``P`` / ``A`` and 15 hex digits), also mapped.
Pixels (Clean Pixel Data)
    All frames are decoded and, outside the image area, set to zero; the copy
    is written uncompressed (Explicit VR Little Endian): colour as 8-bit
    ``RGB`` (YBR and palette colour converted), grey as ``MONOCHROME2`` at the
    original bit depth (``MONOCHROME1`` inverted). The image area is the union
    of the regions of the Sequence of Ultrasound Regions with Region Spatial
    Format 1 (2D). An image whose regions hold no 2D region is not passed on.
Fallback without regions
    The image area is detected conservatively: pixels brighter than
    :data:`~.pixels.DARK_LEVEL` (the brightest frame of a cine counts) are kept only
    where at least :data:`~.pixels.AREA_DENSITY` of their neighbourhood is bright, then
    opened (thin strokes such as burned-in text vanish); the largest connected
    area, holes filled and shrunk by :data:`~.pixels.AREA_MARGIN` pixels, is the image
    area; everything else, including all text apart from it, is zeroed. An
    image where that area is under :data:`~.pixels.MIN_AREA_FRACTION` of the frame is
    not passed on. If no image is left the stage fails.
Model inputs
    Age in years from Patient's Age, else from Patient's Birth Date and the
    Study (or Series, Acquisition, Content) Date; sex ``F``/``M`` or None; the
    model text of intake's structured reports (:mod:`models.llnm.report_text`,
    joined in study order) with every occurrence of the
    patient's name parts, IDs, accession number and birth date (several date
    spellings) replaced by ``[REDACTED]``. They are stage outputs, never
    written into the copy unless :attr:`DeidentificationOptions.retain_patient_characteristics`.
Modules
    :mod:`~pipeline.deidentify.options` (the Annex E options),
    :mod:`~pipeline.deidentify.pseudonyms` (UID, ID and date-offset pseudonyms),
    :mod:`~pipeline.deidentify.values` (DICOM value helpers),
    :mod:`~pipeline.deidentify.identifiers` (the patient's identifiers),
    :mod:`~pipeline.deidentify.headers` (attribute cleaning),
    :mod:`~pipeline.deidentify.pixels` (Clean Pixel Data and the fallback area),
    :mod:`~pipeline.deidentify.model_inputs` (age, sex, report redaction) and
    :mod:`~pipeline.deidentify.stage` (the stage, its summary and the pseudonym store).
"""

from pipeline.deidentify.model_inputs import REDACTED
from pipeline.deidentify.options import DeidentificationOptions, LongitudinalDates
from pipeline.deidentify.stage import (
    DEIDENTIFY,
    Deidentification,
    deidentify,
    summarize_deidentification,
)

__all__ = [
    "DEIDENTIFY",
    "REDACTED",
    "Deidentification",
    "DeidentificationOptions",
    "LongitudinalDates",
    "deidentify",
    "summarize_deidentification",
]
