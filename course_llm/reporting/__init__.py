"""Reporting: usage filters and summaries, and the Prometheus metrics."""
