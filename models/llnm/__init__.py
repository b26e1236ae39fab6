"""LLNM-Net: the TMDL multimodal transformer, its configuration and the report text encoder."""
