"""Shared fixtures for the planner's tests (CPU only; the browser test also needs Chromium)."""

from __future__ import annotations

import threading

import pytest

from ingot.plan.web import make_server


def pytest_configure(config: pytest.Config) -> None:
    # pyproject's marker list belongs to the whole repo; this one is the planner's own.
    config.addinivalue_line("markers", "browser: drives Debian's Chromium through Playwright "
                                       "(install with .ci/install-browser)")


@pytest.fixture
def plan_server():
    """The planner's web app on a free loopback port; yields its base URL."""
    server = make_server("127.0.0.1", 0)
    # A short poll interval: shutdown() waits up to one interval (0.5 s by default) per test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
