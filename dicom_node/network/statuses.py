"""DIMSE status codes the node answers with or reads (PS3.4 Annex B/C and PS3.7 Annex C)."""

from enum import IntEnum


class StoreStatus(IntEnum):
    """C-STORE response statuses."""

    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


class FindStatus(IntEnum):
    """C-FIND response statuses the node reads as a query's caller (others are failures)."""

    SUCCESS = 0x0000  # matching complete
    PENDING = 0xFF00  # a match follows
    PENDING_WARNING = 0xFF01  # a match follows; an optional key was not supported


class EchoStatus(IntEnum):
    """C-ECHO response statuses."""

    SUCCESS = 0x0000


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ diagnostics used by the node (PS3.8 9.3.4), source 1 or 3."""

    CALLING_AE_NOT_RECOGNISED = 0x03
    CALLED_AE_NOT_RECOGNISED = 0x07
    TEMPORARY_CONGESTION = 0x01
    LOCAL_LIMIT_EXCEEDED = 0x02
