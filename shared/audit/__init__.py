"""Audit log: one entry per accepted mutation, written by the worker."""
