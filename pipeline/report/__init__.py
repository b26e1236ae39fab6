"""The report stage: the prediction as DICOM objects in the original study (SR, SC, SEG)."""
