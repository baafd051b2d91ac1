"""Homeward's public event contract, v1, as frozen pydantic models (see CONTRACT.md)."""
