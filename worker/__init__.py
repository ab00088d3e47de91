"""Stockroom's worker tier."""
