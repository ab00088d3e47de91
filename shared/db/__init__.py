"""Database layer: metadata and tables, engine and pools, migrations."""
