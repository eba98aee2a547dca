"""`browser_page()`: a Playwright page in Debian's headless Chromium, for the dashboard tests.

Playwright drives the system's `/usr/bin/chromium` (the `chromium` fixture of tests/test_dashboard.py
finds or installs it), so no browser is downloaded. Without the `playwright` package the tests fail
under CI and skip elsewhere, like the other browser tests.

Waits use selectors (`body[data-state=ready]`), never `wait_for_function`: the dashboard's
Content-Security-Policy forbids the `eval` that a JavaScript predicate needs, and the tests keep
that policy on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


@contextmanager
def browser_page(chromium: str, **context_options: Any) -> Iterator[Any]:
    """A fresh page (1280×900, its own profile) whose uncaught script errors fail the test."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the dev extra installs it
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (CI is set, so the browser tests must run)")
        pytest.skip("playwright is not installed: pip install -e '.[dev]'")
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, **context_options)
            context.set_default_timeout(20_000)
            page = context.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
        finally:
            browser.close()
    assert not errors, f"script errors in the page: {errors}"
