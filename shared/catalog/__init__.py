"""Catalog: products."""
