"""Routing: the registry, its compilation to a LiteLLM Router, and the facade over it."""
