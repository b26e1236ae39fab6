"""The admin REST API and web dashboard (FastAPI), served by ``llnm-node serve``."""
