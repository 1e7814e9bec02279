"""Headless Chromium for page tests (Debian's package; Playwright's own browser download is not used).

Fixtures others reuse:
- `browser`: one Chromium for all the tests in tests/browser (package scope; see below).
- `authed_page`: a factory, `authed_page(live_server, user)` -> a Playwright Page logged in as `user`
  (its own browser context, closed at teardown).
- `page`: `authed_page(live_server, user)` for the default `user` persona.

Use them with `live_server` and `transactional_db`: the live server runs in another thread and must
see committed rows.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1366, "height": 768}  # the laptop the pages are designed for


# Package scope, not session: while Playwright's sync API is started, this thread has a running asyncio
# loop, and Django would take every later test's ORM call for one made from async code. Closing it when
# the page tests are done keeps that (and the override below) out of the rest of the suite.
@pytest.fixture(scope="package")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: run `make chromium` (Debian's package drives the page tests)")
    # The ORM calls the page tests make between Playwright calls are plain synchronous ones; only the
    # loop Playwright keeps running in this thread would make Django's async-safety guard refuse them.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
    try:
        yield chromium
    finally:
        chromium.close()
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def authed_page(browser):
    """`authed_page(live_server, user)`: a page whose browser holds a logged-in session of `user`."""
    from django.conf import settings
    from django.test import Client

    contexts = []

    def open_page(live_server, user):
        client = Client()
        client.force_login(user)  # a real session row, the same one the login form would create
        context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
        context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                              "url": live_server.url}])
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def page(authed_page, live_server, user):
    return authed_page(live_server, user)


@pytest.fixture
def anonymous_page(browser, live_server):
    context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()
