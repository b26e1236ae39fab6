"""Job database: SQLAlchemy models, sessions, migrations and queries."""
