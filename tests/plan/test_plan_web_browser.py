"""The planner page in a real headless browser: change the inputs, see the plan update.

NEEDS: Debian's Chromium (/usr/bin/chromium, or $CHROMIUM) and the Playwright Python client.
`bash .ci/install-browser` installs both; CI runs it first. Without them this test FAILS with
that hint rather than skipping, so a CI machine missing the browser cannot pass silently.
Playwright drives the system Chromium (executable_path); `playwright install` is never used.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request

import pytest

pytestmark = pytest.mark.browser

INSTALL_HINT = "run `bash .ci/install-browser` (apt-get install chromium; pip install playwright)"
# Headless Chromium as root on a machine with no outside network: no sandbox (root), no GPU,
# and none of the background connections (QUIC, sync, updates) that would be refused.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.fail(f"Chromium not found at {path}: {INSTALL_HINT}", pytrace=False)
    return path


@pytest.fixture
def page(plan_server):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the Playwright Python client is not installed: {INSTALL_HINT}", pytrace=False)
    executable = _chromium()
    with sync_playwright() as pw:  # Playwright gives Chromium a fresh temporary profile itself
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            tab = browser.new_page()
            tab.set_default_timeout(15_000)
            tab.goto(plan_server + "/")
            tab.wait_for_function("Number(document.querySelector('#result').dataset.seq) >= 1")
            yield tab
        finally:
            browser.close()


def _settle(tab, **expected: str) -> None:
    """Wait until the rendered plan is the answer to a query holding all of `expected`."""
    checks = " && ".join(f"q.get({json.dumps(k)}) === {json.dumps(v)}" for k, v in expected.items())
    tab.wait_for_function(f"(() => {{ const q = new URLSearchParams("
                          f"document.querySelector('#result').dataset.query || ''); return {checks}; }})()")


def test_page_updates_as_inputs_change(page, plan_server):
    assert page.inner_text("#verdict").startswith("Fits: TP1 PP1 on 1 × H100 SXM")
    assert "Llama-3.1-8B-Instruct" in page.inner_text("#build-command")

    page.select_option("#model", "llama-3.1-405b")
    page.select_option("#num_gpus", "8")
    page.select_option("#precision", "bf16")
    _settle(page, model="llama-3.1-405b", num_gpus="8", precision="bf16")
    assert page.inner_text("#verdict") == "Does not fit"
    assert "nothing fits" in page.inner_text("#build-command")

    page.select_option("#precision", "fp8")
    _settle(page, model="llama-3.1-405b", precision="fp8")
    assert page.inner_text("#verdict").startswith("Fits: TP8 PP1 on 8 × H100 SXM")
    command = page.inner_text("#build-command")
    assert "--quant fp8 --tp 8 --pp 1" in command
    query = page.eval_on_selector("#result", "el => el.dataset.query")
    with urllib.request.urlopen(f"{plan_server}/api/plan?{query}", timeout=10) as response:
        assert command == json.loads(response.read())["recommendation"]["build_command"]

    page.select_option("#gpu", "a100-80gb")
    _settle(page, gpu="a100-80gb", precision="fp8")
    assert "no FP8 tensor cores" in page.inner_text("#notes")
    assert "A100" in page.inner_text("#gpu-info")

    page.fill("#isl", "-5")
    _settle(page, isl="-5")
    assert "--isl must be a positive integer" in page.inner_text("#verdict")

    page.fill("#isl", "4096")
    _settle(page, isl="4096")
    assert "--max-input-len 4096" in page.inner_text("#build-command")
    assert page.locator("#layouts tbody tr.best").count() == 1
