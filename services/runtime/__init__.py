"""Plumbing every service shares: settings, logging, database, inbox/outbox, embedded infrastructure."""
