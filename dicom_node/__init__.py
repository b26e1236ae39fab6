"""DICOM networking: storage SCP, echo, export SCU, TLS, AE policy, CLI."""
