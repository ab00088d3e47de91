"""Low-stock alerts: detection in the mutation, delivery by the worker (Standard Webhooks)."""
