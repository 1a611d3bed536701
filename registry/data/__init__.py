"""Data shipped with the registry: the general regression set (regression.jsonl)."""
