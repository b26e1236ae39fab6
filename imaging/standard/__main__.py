"""Print each generated table of the DICOM standard with its edition and source."""

from imaging.standard import editions

for table, edition in editions().items():
    print(f"{table}: {edition}")
