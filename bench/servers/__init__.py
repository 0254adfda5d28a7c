"""Baseline servers the harness compares ptserve with; each runs as its own process."""
