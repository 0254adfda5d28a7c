"""Benchmark harness for ptserve: compares it with textbook and ceiling servers.

Run it from the repository root with ``python -m bench`` (see ``bench/README.md``).
"""
