"""Fixtures shared across the suite: a real headless Chromium driven by Playwright, for the dashboard's pages.

The browser is Debian's chromium (`make browser` installs it; Playwright's own browser download needs a host this
kind of machine may not reach). Where it is missing the tests fail, saying how to get it: the suite does not skip
the browser."""

import shutil

import pytest


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test module: Playwright keeps a thread while it runs, and a process with a thread
    besides its main one spawns pool workers instead of forking them (fedstack.engine.pool.start_method), so
    the browser must not outlive the modules that use it."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("the dashboard's browser tests need chromium on PATH: `make browser` installs Debian's")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh page, and the console errors and uncaught exceptions it produced (`page.errors`)."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = context.new_page()
    tab.errors = []
    tab.on("console", lambda msg: tab.errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    yield tab
    context.close()
