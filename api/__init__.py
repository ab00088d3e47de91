"""Stockroom's HTTP tier."""
