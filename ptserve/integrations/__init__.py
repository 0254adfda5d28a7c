"""Integrations with other engines. Each imports its engine only when its command runs."""
