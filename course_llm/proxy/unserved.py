"""The routes of LiteLLM's proxy that `course-llm serve` refuses, because they spend past the registry.

LiteLLM's proxy serves more than the routed LLM endpoints, and two kinds of its routes have no
place behind course_llm:

- **Provider pass-through routes** (`/openai/…`, `/anthropic/…`, `/vertex_ai/…`, `/bedrock/…`, …)
  forward a client's request to the provider as it is, with the proxy's own provider key: no
  action, no chain, no budget, no circuit breaker, and no row. A deployment has the provider keys
  in its environment, so any client with the proxy's key could spend there unseen. The prefixes
  come from LiteLLM itself (`course_llm._litellm.passthrough_prefixes`), so a provider it adds is
  covered too.
- **OpenAI APIs that need provider settings the registry cannot give** (assistants, threads,
  batches, files, fine-tuning, vector stores): LiteLLM answers them with a 500 (`'custom_llm_provider'
  must be set`, a module it cannot import) or routes a chat model at them that cannot serve them.

The request guard (course_llm/proxy/routes.py) answers both with a 404 that says why and what to
call instead, for every method and before any key check or body read, so nothing reaches LiteLLM.
LiteLLM runs the pre-call hooks on a pass-through request too (after its own auth), so the hook
refuses it as well: under plain `litellm --config` the pass-through routes are closed all the same.
Azure-style routed paths (`/openai/deployments/<model>/…`) are LiteLLM's own routed endpoints, not
its pass-through, and stay. Under plain `litellm --config` the unserved APIs keep LiteLLM's own
answers (README, "Known limits").
"""

from __future__ import annotations

from course_llm._litellm import passthrough_prefixes
from course_llm.proxy.guard import Refusal

__all__ = ["PASSTHROUGH_CALL_TYPE", "UNSERVED_APIS", "passthrough_refusal", "unserved_refusal"]

#: The first path segment (after an optional `/v1`) of each API refused, and the API's name.
UNSERVED_APIS = {
    "assistants": "Assistants",
    "threads": "Assistants (threads and runs)",
    "batches": "Batch",
    "files": "Files",
    "fine_tuning": "fine-tuning",
    "vector_stores": "vector store",
    "vector_store": "vector store",
}
#: The `call_type` LiteLLM's pass-through routes run the pre-call hooks with (litellm 1.106.2:
#: proxy/pass_through_endpoints/pass_through_endpoints.py).
PASSTHROUGH_CALL_TYPE = "pass_through_endpoint"
#: LiteLLM's Azure-style routed endpoints live under its "/openai/" pass-through prefix.
_ROUTED_UNDER_OPENAI = "/openai/deployments/"
_INSTEAD = "call /v1/chat/completions with model set to an action, or to <action>/<strategy>"
_SHOWN = 80


def unserved_refusal(path: str) -> Refusal | None:
    """A 404 for a path course_llm does not serve (see the module docstring); None for any other."""
    segments = path.split("/", 3)
    first = segments[2] if len(segments) > 2 and segments[1] == "v1" else segments[min(1, len(segments) - 1)]
    api = UNSERVED_APIS.get(first)
    shown = ascii(path)[1:-1][:_SHOWN]
    if api is not None:
        return Refusal(
            404,
            f"course_llm does not serve the {api} API ({shown}): it needs provider settings the "
            f"registry does not give; {_INSTEAD}",
        )
    if path.startswith(passthrough_prefixes()) and not path.startswith(_ROUTED_UNDER_OPENAI):
        return passthrough_refusal(shown)
    return None


def passthrough_refusal(shown: str | None = None) -> Refusal:
    """The 404 for a provider pass-through route (`shown`: the path, when known). The pre-call
    hook raises it too (course_llm/proxy/hooks.py), so plain `litellm --config` refuses them."""
    where = f" ({shown})" if shown else ""
    return Refusal(
        404,
        f"course_llm does not serve LiteLLM's provider pass-through routes{where}: they would call "
        f"the provider with the proxy's key, past the registry, budgets and recording; {_INSTEAD}",
    )
