"""DICOM networking: storage SCP, durable spool, association policy, TLS, SCU, export."""
