"""Prompt hashes and the opt-in response preview: three llm_calls columns from a request's text.

A row never stores the prompt itself, only `system_prompt_hash` and `user_prompt_hash`, so one can
count how often the same prompt came back (a cache worth having, a template that costs the most)
without keeping what users wrote. `response_preview` keeps the first
`COURSE_LLM_RESPONSE_PREVIEW_CHARS` characters of the answer; the default, 0, keeps nothing.

Which text is hashed (the rule a caller needs to reproduce a hash with `hashlib.sha256`):
- the text pieces of every message with role `system` (for the system hash) or `user` (for the
  user hash), in the order they were sent. A piece is a string `content`, or the `text` of each
  `{"type": "text", ...}` part of a list `content`; images, audio and files add nothing;
- the pieces are joined with one newline `"\\n"` and hashed as UTF-8 (a lone surrogate, which a
  JSON body may carry, is encoded as itself rather than refused: `surrogatepass`);
- nothing else is normalised: no stripping, no case folding, no Unicode normalisation. The same
  text always gives the same hash; a different space gives another one;
- no such piece at all (no system message, or a user turn made only of an image) → null.

Every user message, not only the last: the hash names what the model was asked, and two
conversations that end with the same "go on" were asked different things. It follows that the
hash of a growing chat changes at every turn, which is right for finding repeated requests (what a
response cache would hit) and which the last message alone would hide. Assistant and tool turns are
left out: they are answers, not prompts.

The preview is the answer as LiteLLM returns it (`choices[0].message.content`, or the text a
stream delivered), with credentials masked by both nets of course_llm/recording/secrets.py
(configured secrets and key shapes: an answer is upstream text, like an error message) *before*
it is cut, so a cut cannot leave the head of a key that the whole would have matched. The writer's
`mask_record` and `clean_record` then treat it like every other text column (NUL characters and
lone surrogates go).

The preview length is process-wide, like the registered secrets: the SDK callback serves every
facade router of a process (dispatch.py) and the proxy has one logger, so the entry points set it
once from their settings (`set_preview_chars(settings.response_preview_chars)`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from course_llm.recording.secrets import mask_secrets

__all__ = [
    "message_text",
    "preview_chars",
    "preview_of",
    "prompt_hashes",
    "response_preview",
    "response_text",
    "set_preview_chars",
    "stream_text",
    "text_hash",
]

#: Separator of the text pieces that are hashed (see the module docstring).
JOIN = "\n"

_preview_chars = 0


def set_preview_chars(chars: int) -> None:
    """Keep the first `chars` characters of each answer from now on, in this process (0: none)."""
    global _preview_chars
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 0:
        raise ValueError(f"the response preview length must be an integer >= 0, not {chars!r}")
    _preview_chars = chars


def preview_chars() -> int:
    """The preview length in force in this process (0: no preview)."""
    return _preview_chars


# --- hashes ---------------------------------------------------------------------------------------


def _pieces(content: Any) -> list[str]:
    """The text pieces of one message's `content` (a string, or a list of content parts)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list | tuple):
        return [
            part["text"]
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
        ]
    return []


def message_text(messages: Any, role: str) -> str | None:
    """The text of every `role` message, joined with a newline; None when there is none."""
    if not isinstance(messages, list | tuple):
        return None
    pieces: list[str] = []
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") == role:
            pieces.extend(_pieces(message.get("content")))
    return JOIN.join(pieces) if pieces else None


def text_hash(text: str | None) -> str | None:
    """SHA-256 of `text` as UTF-8, in hex; None for None."""
    if text is None:
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def prompt_hashes(messages: Any) -> tuple[str | None, str | None]:
    """(system prompt hash, user prompt hash) of a chat request's `messages`.

    Never raises for what a client may send: anything that is not a list of messages is no prompt.
    """
    return text_hash(message_text(messages, "system")), text_hash(message_text(messages, "user"))


# --- the answer -----------------------------------------------------------------------------------


def _field(value: Any, name: str) -> Any:
    """`value.name` or `value[name]`: LiteLLM's objects, or the plain dicts of a payload."""
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def response_text(response: Any) -> str | None:
    """The answer text of a chat completion (its first choice), None when it has none (a tool
    call, a refusal without content, not a chat completion at all)."""
    choices = _field(response, "choices")
    if not isinstance(choices, list | tuple) or not choices:
        return None
    content = _field(_field(choices[0], "message"), "content")
    if isinstance(content, str):
        return content
    pieces = _pieces(content)
    return "".join(pieces) if pieces else None


def stream_text(chunks: Iterable[Any]) -> str | None:
    """The answer text a stream delivered: the first choice's `delta.content` of every chunk."""
    pieces: list[str] = []
    for chunk in chunks:
        choices = _field(chunk, "choices")
        if not isinstance(choices, list | tuple) or not choices:
            continue
        for choice in choices:
            if _field(choice, "index") in (None, 0):
                content = _field(_field(choice, "delta"), "content")
                if isinstance(content, str):
                    pieces.append(content)
                break
    return "".join(pieces) if pieces else None


def response_preview(text: str | None, chars: int | None = None) -> str | None:
    """The first `chars` (default: the process-wide length) characters of `text`, credentials
    masked; None when previews are off or there is no text.

    Masked before the cut, on a prefix a few times longer than the cut (which bounds the cost of
    masking a huge answer, as `records.redact` does): a key that starts inside the preview is
    masked whole.
    """
    limit = _preview_chars if chars is None else chars
    if limit <= 0 or text is None:
        return None
    return mask_secrets(text[: 4 * limit + 256])[:limit]


def preview_of(response: Any) -> str | None:
    """The preview of a chat completion's answer; no work at all while previews are off (the
    default), since every recorded success passes here."""
    if _preview_chars <= 0:
        return None
    return response_preview(response_text(response))
