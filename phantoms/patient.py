"""Fictional patients, sites and devices: the identifying data a phantom study carries.

Names, hospitals and addresses are invented; device names are common
ultrasound systems so headers look like what a PACS sends. Demographics
follow the paper's cohort: median age 43 (IQR 34-54), 72 % female.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import numpy as np

from phantoms.labels import Sex

_FAMILY = (
    "Okafor", "Lindqvist", "Hartmann", "Moreau", "Castellano", "Nakamura", "Kowalczyk",
    "Abernathy", "Delacroix", "Fitzgerald", "Ivanova", "Johansson", "Kapoor", "Lombardi",
    "Mbeki", "Novak", "Oyelaran", "Petrov", "Quintero", "Rasmussen", "Sandoval", "Takahashi",
    "Underwood", "Vasquez", "Whitfield", "Yamamoto", "Zielinski", "Brannigan", "Calloway",
    "Eriksen",
)  # fmt: skip
_GIVEN_F = (
    "Grace", "Ingrid", "Helena", "Amelie", "Lucia", "Haruka", "Agnieszka", "Margaret",
    "Simone", "Siobhan", "Tatiana", "Astrid", "Priya", "Chiara", "Thandiwe", "Zuzana",
)  # fmt: skip
_GIVEN_M = (
    "Emeka", "Gustav", "Matthias", "Laurent", "Rodrigo", "Kenji", "Tomasz", "Cornelius",
    "Dmitri", "Anders", "Rohan", "Giorgio", "Sipho", "Radek", "Obadiah", "Bartholomew",
)  # fmt: skip
_SITES = (
    ("St. Aldric General Hospital", "12 Harbour Road, Westbury"),
    ("Riverside University Medical Center", "400 Mill Lane, Eastford"),
    ("Northgate Thyroid Clinic", "7 Cedar Avenue, Lowmoor"),
    ("Kingsbridge Regional Hospital", "55 Station Street, Kingsbridge"),
    ("Hollowell Memorial Hospital", "2 Abbey Close, Hollowell"),
)
_DEVICES = (
    ("GE Healthcare", "LOGIQ E10", "ML6-15"),
    ("Philips", "EPIQ 7G", "eL18-4"),
    ("Siemens Healthineers", "ACUSON Sequoia", "18L6"),
    ("Canon Medical Systems", "Aplio i800", "i18LX5"),
    ("Mindray", "Resona 7", "L14-5WU"),
    ("Samsung Medison", "RS85", "LA2-14A"),
)


@dataclass(frozen=True)
class Person:
    """A name as DICOM stores it (``Family^Given``) and its parts."""

    family: str
    given: str

    @property
    def dicom(self) -> str:
        """The Person Name value."""
        return f"{self.family}^{self.given}"

    @property
    def burned(self) -> str:
        """The form burned into pixels: ``FAMILY, GIVEN``."""
        return f"{self.family.upper()}, {self.given.upper()}"


@dataclass(frozen=True)
class Encounter:
    """Who, where, when and with what one phantom study was made."""

    patient: Person
    sex: Sex
    age_years: int
    patient_id: str
    issuer: str
    birth_date: date
    accession: str
    study_datetime: datetime
    institution: str
    institution_address: str
    station_name: str
    device_serial: str
    manufacturer: str
    model: str
    transducer: str
    referring_physician: Person
    operator: Person

    @property
    def phi(self) -> tuple[str, ...]:
        """Every identifying string this encounter puts into headers or pixels.

        The private-tag texts are added by :mod:`phantoms.headers`,
        which builds them.
        """
        people = (self.patient, self.referring_physician, self.operator)
        values = [p.dicom for p in people] + [p.burned for p in people]
        values += [part for p in people for part in (p.family, p.given)]
        values += [
            self.patient_id,
            self.issuer,
            self.birth_date.strftime("%Y%m%d"),
            self.birth_date.isoformat(),
            self.accession,
            self.institution,
            self.institution.upper(),
            self.institution_address,
            self.station_name,
            self.device_serial,
        ]
        return tuple(dict.fromkeys(values))


def _person(rng: np.random.Generator, sex: Sex) -> Person:
    given = _GIVEN_F if sex == "F" else _GIVEN_M
    return Person(family=str(rng.choice(_FAMILY)), given=str(rng.choice(given)))


def sample_encounter(rng: np.random.Generator) -> Encounter:
    """Draw a patient (age, sex per the paper's cohort), a site, a device and dates."""
    sex: Sex = "F" if rng.random() < 0.72 else "M"
    age = int(np.clip(round(rng.normal(44.0, 13.0)), 18, 85))
    study_day = date(2018, 1, 1) + timedelta(days=int(rng.integers(0, 8 * 365)))
    minutes = int(rng.integers(7 * 60 + 30, 18 * 60))
    study_datetime = datetime.combine(
        study_day, time(minutes // 60, minutes % 60, int(rng.integers(0, 60)))
    )
    birth_date = study_day - timedelta(days=int(age * 365.25 + rng.integers(1, 364)))
    institution, address = _SITES[int(rng.integers(len(_SITES)))]
    manufacturer, model, transducer = _DEVICES[int(rng.integers(len(_DEVICES)))]
    site_code = "".join(word[0] for word in institution.split() if word[0].isupper())
    return Encounter(
        patient=_person(rng, sex),
        sex=sex,
        age_years=age,
        patient_id=f"{int(rng.integers(10**6, 10**8)):08d}",
        issuer=f"{site_code}-MRN",
        birth_date=birth_date,
        accession=f"{site_code}{study_day:%y}{int(rng.integers(10**5, 10**6))}",
        study_datetime=study_datetime,
        institution=institution,
        institution_address=address,
        station_name=f"{site_code}-US{int(rng.integers(1, 9))}",
        device_serial=f"SN{int(rng.integers(10**6, 10**7))}",
        manufacturer=manufacturer,
        model=model,
        transducer=transducer,
        referring_physician=_person(rng, "F" if rng.random() < 0.5 else "M"),
        operator=_person(rng, "F" if rng.random() < 0.7 else "M"),
    )
