"""Cost control: what the registry's `budgets:` and `circuit_breaker:` sections do at run time.

    budgets  BudgetBook: in-memory spend per budget, checked on the request path without I/O,
             refreshed from the database in the background
    breaker  the circuit breaker: a model skipped after consecutive transient failures

The registry (`course_llm.routing.sections`) only parses and validates these sections; this
package decides, per request, what they mean. It imports neither LiteLLM nor SQLAlchemy: the
database query behind a budget refresh is `course_llm.db.spend`, handed in by whoever builds the book.
"""
