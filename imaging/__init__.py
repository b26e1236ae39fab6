"""The pure imaging layer: DICOM files, decoding, crop areas, masks and features (no models)."""
