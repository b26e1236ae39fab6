"""Site profiles: phantoms that look like another hospital's patients and device.

A :class:`SiteProfile` changes three things of every case it renders, so a
model trained on the default phantoms can be measured and adapted on a
simulated site:

* the device: the images' gain, speckle grain and depth are shifted as by the
  :class:`~phantoms.case.PhantomOptions` fields of the same names (gain
  added, scales multiplied with the options' own), and ``Manufacturer`` /
  ``ManufacturerModelName`` name the site's scanner instead of the drawn one;
* the population: ``prevalence_logit_shift`` is added to the label model's
  logit (:func:`phantoms.labels.llnm_logit`), so the case's true probability
  and prevalence change while the same features keep the same ranking;
* the records: with probability ``label_noise`` the recorded label is the
  opposite of the true one (pathology or record errors), drawn from a stream
  of its own so nothing else changes. The recorded label is then 1 with
  probability ``label_noise + (1 - 2 label_noise) p`` for true probability
  ``p``: still monotone in ``p``, so the AUC of ``p`` against the recorded
  labels stays the best any model can reach (the site's Bayes AUC).

Everything else (patient, nodule, anatomy, report, UIDs' inputs apart from
the profile) is drawn as for the default profile. :data:`DEFAULT_SITE`
changes nothing: its cases are byte for byte the cases made without a profile.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SiteProfile:
    """A simulated site: its device's image shift and headers, its population and records.

    Raises
    ------
    ValueError
        If ``name`` is empty, ``speckle_scale`` is not positive, ``depth_scale``
        is below 1, or ``label_noise`` is outside [0, 0.5).
    """

    name: str
    gain_shift_db: float = 0.0  # added to the options' gain shift
    speckle_scale: float = 1.0  # multiplies the options' speckle scale
    depth_scale: float = 1.0  # multiplies the options' depth scale
    manufacturer: str | None = None  # Manufacturer of the images; None: the drawn device's
    model_name: str | None = None  # ManufacturerModelName; None: the drawn device's
    prevalence_logit_shift: float = 0.0  # added to the true LLNM logit
    label_noise: float = 0.0  # probability that the recorded label is flipped

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a site profile needs a name")
        if not self.speckle_scale > 0:
            raise ValueError(f"speckle_scale must be positive, not {self.speckle_scale}")
        if not self.depth_scale >= 1:
            raise ValueError(f"depth_scale must be at least 1, not {self.depth_scale}")
        if not 0 <= self.label_noise < 0.5:
            raise ValueError(f"label_noise must be in [0, 0.5), not {self.label_noise}")

    def recorded_label_probability(self, probability: float) -> float:
        """The probability that a case of true ``probability`` is recorded LLNM-positive."""
        return self.label_noise + (1 - 2 * self.label_noise) * probability


DEFAULT_SITE = SiteProfile("default")

SITE_B = SiteProfile(
    "site-b",
    gain_shift_db=4.0,
    speckle_scale=1.3,
    depth_scale=1.15,
    manufacturer="Phantom Medical B",
    model_name="PM-B 7",
    prevalence_logit_shift=-0.7,
    label_noise=0.1,
)

SITE_PROFILES: dict[str, SiteProfile] = {site.name: site for site in (DEFAULT_SITE, SITE_B)}


def site_profile(name: str) -> SiteProfile:
    """The registered profile ``name`` (:data:`SITE_PROFILES`).

    Raises
    ------
    ValueError
        If no profile has that name; the message lists the known ones.
    """
    try:
        return SITE_PROFILES[name]
    except KeyError:
        known = ", ".join(SITE_PROFILES)
        raise ValueError(f"unknown site profile {name!r}; known: {known}") from None
