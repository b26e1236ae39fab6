"""The SOP classes the pipeline works with."""

from pydicom.uid import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    ExtensibleSRStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

# The retired (pre-1996) ultrasound classes still come from older consoles and archives.
ULTRASOUND_IMAGE_STORAGE_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
ULTRASOUND_MULTIFRAME_IMAGE_STORAGE_RETIRED = "1.2.840.10008.5.1.4.1.1.3"
ULTRASOUND_IMAGE_CLASSES: frozenset[str] = frozenset(
    {
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        ULTRASOUND_IMAGE_STORAGE_RETIRED,
        ULTRASOUND_MULTIFRAME_IMAGE_STORAGE_RETIRED,
    }
)
SECONDARY_CAPTURE_CLASS: str = SecondaryCaptureImageStorage
SR_CLASSES: frozenset[str] = frozenset(
    {
        BasicTextSRStorage,
        EnhancedSRStorage,
        ComprehensiveSRStorage,
        Comprehensive3DSRStorage,
        ExtensibleSRStorage,
    }
)
