"""What the listener accepts: storage SOP classes and transfer syntaxes."""

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SegmentationStorage,
)
from pynetdicom import register_uid
from pynetdicom.service_class import StorageServiceClass

from imaging.sop_classes import (
    SECONDARY_CAPTURE_CLASS,
    SR_CLASSES,
    ULTRASOUND_IMAGE_CLASSES,
    ULTRASOUND_IMAGE_STORAGE_RETIRED,
    ULTRASOUND_MULTIFRAME_IMAGE_STORAGE_RETIRED,
)

ACCEPTED_STORAGE_CLASSES: frozenset[str] = (
    ULTRASOUND_IMAGE_CLASSES | {SECONDARY_CAPTURE_CLASS} | SR_CLASSES
)
# Result objects the node makes that are of no class it takes in: when the PACS sends the
# study back, the node's own are acknowledged and not stored (as its SRs and SCs are);
# anyone else's are refused.
OWN_RESULT_ONLY_CLASSES: frozenset[str] = frozenset({SegmentationStorage})
# Secondary captures are taken only when they come from an ultrasound device
# ("OT" is what many US consoles write into screen captures).
SECONDARY_CAPTURE_MODALITIES: frozenset[str] = frozenset({"US", "OT"})

TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)


def register_retired_storage_classes() -> None:
    """Teach pynetdicom the retired ultrasound classes (it only knows current ones); idempotent."""
    register_uid(
        ULTRASOUND_IMAGE_STORAGE_RETIRED, "UltrasoundImageStorageRetired", StorageServiceClass
    )
    register_uid(
        ULTRASOUND_MULTIFRAME_IMAGE_STORAGE_RETIRED,
        "UltrasoundMultiFrameImageStorageRetired",
        StorageServiceClass,
    )
