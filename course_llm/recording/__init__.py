"""Recording: one row per attempt, from LiteLLM hooks or `track_llm_call`, to the database."""
