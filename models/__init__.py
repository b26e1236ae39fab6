"""LLNM-Net, segmenters, model bundles and training."""
