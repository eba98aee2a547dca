"""Cost control: what the registry's `cache:`, `budgets:` and `circuit_breaker:` sections do.

    sections  the sections' Pydantic models; the registry validates them with the rest of it
    budgets   BudgetBook: in-memory spend per budget, checked on the request path without I/O,
              refreshed from the database in the background
    breaker   the circuit breaker: a model skipped after consecutive transient failures
    controls  Controls: budgets and breaker as one facade router or one proxy process applies them

Imports flow in, never out: the registry, the facade and the proxy use this package; it uses
only `errors` and the row types of `recording`. It imports neither LiteLLM nor SQLAlchemy: the
database query behind a budget refresh is `course_llm.db.spend`, handed in by whoever builds it.
"""
