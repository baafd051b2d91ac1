"""Homeward's four services and the runtime they share."""
