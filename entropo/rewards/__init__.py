"""Verifiable rewards: the API, the built-ins, and scoring a batch."""
