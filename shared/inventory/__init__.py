"""Inventory: locations, stock levels, the movement ledger."""
