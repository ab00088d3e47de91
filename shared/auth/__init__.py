"""API keys: creation, hashing, verification and scopes."""
