"""The database: tables, engine and dialect helpers, migrations, the ledger and runs."""
