"""Bulk imports: a CSV of restocks uploaded through the API, applied by a worker job."""
