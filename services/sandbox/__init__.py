"""Sandbox providers: standalone HTTP servers that behave like the real remote providers.

Each runs in its own process with its own durable store, so Homeward talks to it exactly as it
would talk to the real thing (timeouts, retries, idempotency keys, signed callbacks), and faults
can be injected from the environment to exercise the unhappy paths.
"""
