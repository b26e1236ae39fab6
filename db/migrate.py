"""Alembic migrations, run from code (``llnm-node db upgrade`` and at ``serve`` start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from db.session import Database

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(database: Database) -> Config:
    """An Alembic configuration bound to ``database``'s engine."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = database.engine
    return config


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(database), revision)
