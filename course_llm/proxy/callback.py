"""The object `proxy_config.yaml` names as its callback: `course_llm.proxy.callback.logger`.

LiteLLM may load this file twice (by path, from the config's directory, and by import); both
copies hand out the same process-wide ProxyLogger, so there is one writer per process.
"""

from course_llm.proxy.hooks import proxy_logger

logger = proxy_logger()
