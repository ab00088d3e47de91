"""Durable job records: the outbox, status, cancel, retry."""
