"""Alembic migrations of loyalcast's own tables (run with ``loyalcast db upgrade``)."""
