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
call instead, for every method and before any key check or body read, so nothing reaches LiteLLM;
a websocket to a pass-through path (`/openai/…`, `/vertex_ai/live`, `/deepgram/…`) is refused at
the handshake.
LiteLLM runs the pre-call hooks on a pass-through request too (after its own auth), so the hook
refuses it as well: under plain `litellm --config` the HTTP pass-through routes are closed too.
Azure-style routed paths (POSTs to `/openai/deployments/<model>/chat/completions` and the like) and
the `/openai/v1/realtime` websocket are LiteLLM's own routed endpoints, not its pass-through, and
stay. A few other routed aliases of `/v1/…` under a provider prefix (`/openai/v1/responses`,
`/cursor/chat/completions`) are refused with the pass-through routes: `/v1/…` serves the same,
behind the guard's body checks. Under plain `litellm --config` the unserved
APIs keep LiteLLM's own answers (README, "Known limits").
"""

from __future__ import annotations

from course_llm._litellm import passthrough_prefixes
from course_llm.proxy.guard import Refusal

__all__ = ["PASSTHROUGH_CALL_TYPE", "UNSERVED_APIS", "passthrough_refusal", "unserved_refusal"]

#: A path segment naming each API refused (among the first three: LiteLLM serves the files and
#: batches APIs under `/{provider}/v1/…` too), and the API's name.
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
#: LiteLLM's own routed endpoints under its "/openai/" pass-through prefix, served through the
#: Router like `/v1/…` (litellm 1.106.2: proxy_server.py, image_endpoints/endpoints.py): POSTs to
#: `/openai/deployments/<model>/<one of these>`, and the realtime websocket.
_DEPLOYMENTS = "/openai/deployments/"
_ROUTED_SUFFIXES = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/images/generations",
    "/images/edits",
)
_REALTIME_WEBSOCKET = "/openai/v1/realtime"
_INSTEAD = "call /v1/chat/completions with model set to an action, or to <action>/<strategy>"
_SHOWN = 80


def unserved_refusal(path: str, method: str | None) -> Refusal | None:
    """A 404 for a path course_llm does not serve (see the module docstring); None for any other.
    `method` is the HTTP method, None for a websocket."""
    if path.startswith(passthrough_prefixes()):
        if method == "POST" and _routed_deployment(path):
            return None
        if path == _REALTIME_WEBSOCKET and method is None:
            return None
        return passthrough_refusal(_shown(path))
    segments = [*path.split("/", 4)[1:4], "", ""]
    # `/<api>`, `/v1/<api>` or `/<provider>/v1/<api>`, never a model or action named like one.
    named = [
        segments[0],
        segments[1] if segments[0] == "v1" else "",
        segments[2] if segments[1] == "v1" else "",
    ]
    api = next((UNSERVED_APIS[name] for name in named if name in UNSERVED_APIS), None)
    if api is None:
        return None
    return Refusal(
        404,
        f"course_llm does not serve the {api} API ({_shown(path)}): it needs provider settings the "
        f"registry does not give; {_INSTEAD}",
    )


def _shown(path: str) -> str:
    """A client's path, escaped and cut, for a message."""
    return ascii(path)[1:-1][:_SHOWN]


def _routed_deployment(path: str) -> bool:
    """`/openai/deployments/<model>/<routed suffix>`, a model named (as `endpoint_of` reads it)."""
    rest = path[len(_DEPLOYMENTS) :] if path.startswith(_DEPLOYMENTS) else ""
    return any(rest.endswith(suffix) and len(rest) > len(suffix) for suffix in _ROUTED_SUFFIXES)


def passthrough_refusal(shown: str | None = None) -> Refusal:
    """The 404 for a provider pass-through route (`shown`: the path, when known). The pre-call
    hook raises it too (course_llm/proxy/hooks.py), so plain `litellm --config` refuses them."""
    where = f" ({shown})" if shown else ""
    return Refusal(
        404,
        f"course_llm does not serve LiteLLM's provider pass-through routes{where}: they would call "
        f"the provider with the proxy's key, past the registry, budgets and recording; {_INSTEAD}",
    )
