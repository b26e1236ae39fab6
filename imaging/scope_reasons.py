"""Why an image or a study is outside what the model can assess: the coded reasons.

Every rule of the scope gate (study and image rules before the models, model
checks after segmentation) names one :class:`Reason`. The codes are stable:
they are stored in the job database, counted in the metrics and shown to
admins; :attr:`Reason.text` is the wording radiologists read ("Not assessed:
colour Doppler image"). No reason ever carries a header value or pixel data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """A coded reason for not assessing an image or a study."""

    NOT_ULTRASOUND = "not_ultrasound"
    STUDY_OUT_OF_SCOPE = "study_out_of_scope"
    COLOUR_DOPPLER = "colour_doppler"
    SPECTRAL_DOPPLER = "spectral_doppler"
    COLOUR_OVERLAY = "colour_overlay"
    NO_TISSUE_REGION = "no_tissue_region"
    SPLIT_SCREEN = "split_screen"
    NO_THYROID = "no_thyroid"
    LOW_NODULE_CONFIDENCE = "low_nodule_confidence"
    OUT_OF_DISTRIBUTION = "out_of_distribution"

    @property
    def text(self) -> str:
        """The reason in a few words, as the notice SR and the dashboard say it."""
        return _TEXT[self]


_TEXT = {
    Reason.NOT_ULTRASOUND: "not an ultrasound image",
    Reason.STUDY_OUT_OF_SCOPE: "not a thyroid study by this site's rules",
    Reason.COLOUR_DOPPLER: "colour Doppler image",
    Reason.SPECTRAL_DOPPLER: "spectral Doppler or trace image",
    Reason.COLOUR_OVERLAY: "colour overlay (Doppler or elastography) in the image",
    Reason.NO_TISSUE_REGION: "no grey-scale B-mode region",
    Reason.SPLIT_SCREEN: "split screen with more than one B-mode view",
    Reason.NO_THYROID: "no thyroid found",
    Reason.LOW_NODULE_CONFIDENCE: "nodule detection below the model's confidence threshold",
    Reason.OUT_OF_DISTRIBUTION: "outside the model's training range",
}


@dataclass(frozen=True)
class Exclusion:
    """An image (or study) left out, why, and an optional measurement behind it.

    ``detail`` is a short, value-free explanation such as ``"score 41.2 > 18.0"``
    or ``"colour in 23 % of the B-mode region"``; never a header value.
    """

    reason: Reason
    detail: str = ""

    @property
    def text(self) -> str:
        """``reason.text`` with the detail in brackets when there is one."""
        return f"{self.reason.text} ({self.detail})" if self.detail else self.reason.text


def outcome_text(outcome: str, reason: str | None) -> str:
    """A result without a probability in a few words: "not assessed: colour Doppler image".

    An unknown reason code (from a newer node) is shown as the code.
    """
    words = outcome.replace("_", " ")
    if reason is None:
        return words
    try:
        return f"{words}: {Reason(reason).text}"
    except ValueError:
        return f"{words}: {reason}"
