"""Metrics, logs and per-request context."""
