"""Regenerate the README's dashboard screenshot: `.venv/bin/python -m tests.dashboard_screenshot`.

Seeds a week of plausible traffic (deterministic: a fixed random seed) into a temporary SQLite
file, serves the dashboard as tests/test_dashboard.py does, and has Chromium (through Playwright)
take a 1280-px-wide screenshot of the page, written to docs/dashboard.png (or the path given).
"""

from __future__ import annotations

import random
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from course_llm.recording.records import CallRecord
from tests.dashboard_browser import browser_page
from tests.test_dashboard import KEY, NOW, _database, _find_chromium, serve

FLASH = ("gemini", "gemini-2.5-flash", 0.0003, 0.0025)
CHAINS = {
    "video_analysis": [FLASH, ("gemini", "gemini-2.5-pro", 0.00125, 0.01)],
    "course_structuring": [("anthropic", "claude-sonnet", 0.003, 0.015), FLASH],
    "text_processing": [("deepseek", "deepseek-chat", 0.00027, 0.0011), FLASH],
    "presentation_analysis": [FLASH, ("openai", "gpt-4o-mini", 0.00015, 0.0006)],
}
TENANTS = ["acme-university", "globex-school", "initech-academy"]
OPERATIONS = {
    "video_analysis": "lecture_notes",
    "course_structuring": "syllabus",
    "text_processing": "grade_essay",
    "presentation_analysis": "slide_review",
}
ERRORS = [(503, "ServiceUnavailableError"), (429, "RateLimitError"), (500, "InternalServerError")]


def traffic(requests: int = 240, seed: int = 7) -> list[CallRecord]:
    rng = random.Random(seed)
    records: list[CallRecord] = []
    for _ in range(requests):
        action = rng.choice(list(CHAINS))
        start = NOW - timedelta(minutes=rng.randint(5, 7 * 24 * 60))
        request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        tenant = rng.choice(TENANTS)
        common = {
            "request_id": request_id, "action": action, "strategy": "default", "served_strategy": "default",
            "tenant_id": tenant, "operation": OPERATIONS[action], "end_user": f"user-{rng.randint(1, 9)}",
            "source": "proxy", "metadata": {"tags": {"course": rng.choice(["bio101", "chem201", "hist110"])}},
        }  # fmt: skip
        at, attempt = start, 1
        outcome = rng.random()
        hops = [] if outcome < 0.85 else [0] if outcome < 0.97 else [0, 0, 1, 1]
        for model_index in [*hops, None]:
            failed = model_index is not None
            provider, model, price_in, price_out = CHAINS[action][model_index or (1 if hops else 0)]
            if outcome >= 0.97 and not failed:
                break  # every attempt failed
            latency = rng.uniform(300, 900) if failed else rng.uniform(600, 6000)
            tokens_in, tokens_out = rng.randint(500, 6000), rng.randint(100, 1500)
            status, error = rng.choice(ERRORS) if failed else (None, None)
            records.append(
                CallRecord(
                    **common, attempt=attempt, created_at=at, provider=provider, model_id=model,
                    tokens_in=None if failed else tokens_in, tokens_out=None if failed else tokens_out,
                    latency_ms=latency, success=not failed, status_code=status, error_class=error,
                    error_message=f"{model} is overloaded" if failed else None,
                    cost_usd=None if failed else tokens_in / 1000 * price_in + tokens_out / 1000 * price_out,
                )
            )  # fmt: skip
            at += timedelta(milliseconds=latency + 500 * attempt)  # the backoff before the next attempt
            attempt += 1
    return records


def main(output: Path) -> None:
    chromium = _find_chromium()
    assert chromium, "Chromium is missing: apt-get install chromium"
    records = traffic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve(_database(Path(tmp), records), records) as url,
        browser_page(chromium) as page,
    ):
        page.goto(f"{url}/dashboard#key={KEY}&range=7d")
        page.wait_for_selector("body[data-state=ready]", state="attached")
        page.screenshot(path=str(output), clip={"x": 0, "y": 0, "width": 1280, "height": 900})
    print(f"wrote {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png"))
