"""course_llm as a LiteLLM proxy: the logger and hooks, `course-llm serve`, the mock upstream,
and the HTTP routes mounted next to LiteLLM's own (usage API, metrics, dashboard)."""
