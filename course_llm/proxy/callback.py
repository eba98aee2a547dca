"""The object `proxy_config.yaml` names as its callback: `course_llm.proxy.callback.logger`.

LiteLLM may load this file twice (by path, from the config's directory, and by import); both
copies hand out the same process-wide ProxyLogger, so there is one writer per process.

LiteLLM imports this module while it loads its config, in `course-llm serve` and in plain
`litellm --config` alike, so this is where the proxy process starts masking secrets
(course_llm/recording/secrets.py): in LiteLLM's, uvicorn's and our own log lines, and in every
row, for each credential the config uses, the master key and the database password.

It also quiets LiteLLM's proxy log where course_llm logs better (course_llm/proxy/proxy_log.py).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import structlog
import yaml

from course_llm.proxy.hooks import proxy_logger
from course_llm.proxy.proxy_log import install_quiet_proxy_log
from course_llm.recording.log_masking import install_log_masking
from course_llm.recording.secrets import register_secrets, secret_values_from, secret_values_from_proxy_config
from course_llm.routing.compiler import CONTROLS_KEY
from course_llm.settings import Settings

log = structlog.get_logger()


def _proxy_config_path() -> str | None:
    """The config LiteLLM is loading: `litellm --config PATH` sets its global, `serve` the env."""
    server = sys.modules.get("litellm.proxy.proxy_server")
    path = getattr(server, "user_config_file_path", None) or os.environ.get("CONFIG_FILE_PATH")
    return str(path) if path else None


def _proxy_config() -> dict[str, Any]:
    """The config LiteLLM is loading, as data ({} when it cannot be read)."""
    path = _proxy_config_path()
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            config: Any = yaml.safe_load(handle) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        # LiteLLM itself read this file a moment ago; the patterns still mask key shapes.
        log.warning("proxy_config_unread", config=path, error=type(exc).__name__)
        return {}
    return config if isinstance(config, dict) else {}


def register_proxy_secrets(settings: Settings, config: dict[str, Any]) -> None:
    """Register every credential this proxy was configured with (see the module docstring)."""
    register_secrets(secret_values_from(settings) | secret_values_from_proxy_config(config))


install_log_masking()
_config = _proxy_config()
register_proxy_secrets(Settings(), _config)
logger = proxy_logger()
# The registry's circuit breaker (and budgets), as the compiler copied them into the config.
logger.configure_controls(_config.get(CONTROLS_KEY))
install_quiet_proxy_log(logger.has_failed_attempts)
