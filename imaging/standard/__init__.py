"""Tables of the DICOM standard, generated from maintained machine-readable sources.

``scripts/generate_standard_tables.py`` writes the modules of this package from
installed source packages; each module records the table it holds (``TABLE``),
the edition of the standard (``EDITION``) and its source (``SOURCE``).
``llnm-node standard-tables`` prints them.
"""

from imaging.standard import basic_profile, ultrasound_regions


def editions() -> dict[str, str]:
    """Each generated table, with the edition of the standard it reflects and its source."""
    return {
        module.TABLE: f"DICOM {module.EDITION}, from {module.SOURCE}"
        for module in (basic_profile, ultrasound_regions)
    }
