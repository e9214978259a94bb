"""What marketers and operators ask of the ledger and the templates: preview, check,
reports, demo data."""
