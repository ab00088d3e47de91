"""Stockroom's shared package: settings, database layer, schemas, domain services, queue access."""
