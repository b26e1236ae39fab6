"""How the node names itself in the DICOM objects it makes."""

from importlib.metadata import version

MANUFACTURER = "LLNM node (open source)"
SOFTWARE_VERSION = version("llnm-node")
