"""Proxy authentication: the master key, and a 401 for anything else.

Named in the compiled config as `general_settings.custom_auth`, so `course-llm serve` and plain
`litellm --config proxy_config.yaml` behave alike. Without it, LiteLLM answers a wrong key with
`400 No connected db` when it runs without its own database (course_llm's default).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from fastapi import HTTPException

BEARER = "Bearer "


def check_master_key(presented: str | None) -> None:
    """Raise HTTPException 401 unless `presented` (with or without "Bearer ") is the master key."""
    expected = os.environ.get("LITELLM_MASTER_KEY", "")
    if not expected:
        raise HTTPException(status_code=503, detail="the proxy has no LITELLM_MASTER_KEY set")
    key = (presented or "").strip()
    key = key[len(BEARER) :].strip() if key.startswith(BEARER) else key
    if not key:
        raise HTTPException(status_code=401, detail="missing key: send Authorization: Bearer <key>")
    if not secrets.compare_digest(key.encode(), expected.encode()):
        raise HTTPException(status_code=401, detail="wrong key")


async def user_api_key_auth(request: Any, api_key: str) -> Any:
    """LiteLLM's custom_auth hook: the master key is the only key."""
    from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

    check_master_key(api_key)
    return UserAPIKeyAuth(api_key=api_key, user_role=LitellmUserRoles.PROXY_ADMIN)
