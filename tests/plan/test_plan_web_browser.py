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
import threading
import urllib.request

import pytest

from ingot.plan.web import make_server

pytestmark = pytest.mark.browser

INSTALL_HINT = "run `bash .ci/install-browser` (apt-get install chromium; pip install playwright)"
# Headless Chromium as root on a machine with no outside network: no sandbox (root), no GPU,
# and none of the background connections (QUIC, sync, updates) that would be refused.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _missing() -> str | None:
    """Why the browser cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the Playwright Python client is not installed: {INSTALL_HINT}"
    if not os.path.exists(CHROMIUM):
        return f"Chromium not found at {CHROMIUM}: {INSTALL_HINT}"
    return None


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the module (starting it is most of the time), or the reason
    there is none, which each test turns into a failure (not a skip, not an error)."""
    missing = _missing()
    if missing:
        yield missing
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:  # Playwright gives Chromium a fresh temporary profile itself
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser, url: str):
    """A tab on the planner page, once its first plan has rendered."""
    if isinstance(browser, str):
        pytest.fail(browser, pytrace=False)
    tab = browser.new_page()
    tab.set_default_timeout(15_000)
    tab.goto(url)
    tab.wait_for_function("Number(document.querySelector('#result').dataset.seq) >= 1")
    return tab


def _settle(tab, **expected: str) -> None:
    """Wait until the rendered plan is the answer to a query holding all of `expected`."""
    checks = " && ".join(f"q.get({json.dumps(k)}) === {json.dumps(v)}" for k, v in expected.items())
    tab.wait_for_function(f"(() => {{ const q = new URLSearchParams("
                          f"document.querySelector('#result').dataset.query || ''); return {checks}; }})()")


def test_page_updates_as_inputs_change(browser, plan_server):
    page = _open(browser, plan_server + "/")
    assert page.inner_text("#verdict").startswith("Fits: TP1 PP1 on 1 × H100 SXM")
    assert page.inner_text("#build-command").startswith("ingot build ./Llama-3.1-8B-Instruct -o ")
    assert "hf download meta-llama/Llama-3.1-8B-Instruct" in page.inner_text("#build-notes")

    page.select_option("#model", "llama-3.1-405b")
    page.select_option("#num_gpus", "8")
    page.select_option("#precision", "bf16")
    _settle(page, model="llama-3.1-405b", num_gpus="8", precision="bf16")
    assert page.inner_text("#verdict") == "Does not fit"
    assert "nothing fits" in page.inner_text("#build-command")

    page.select_option("#precision", "fp8")
    _settle(page, model="llama-3.1-405b", precision="fp8")
    assert page.inner_text("#verdict").startswith("Fits: TP8 PP1 on 8 × H100 SXM")
    # ingot build has --tp and --quant fp8: a TP8 fp8 command, and only the download note.
    command = page.inner_text("#build-command")
    assert command.startswith("ingot build ./Llama-3.1-405B-Instruct -o engines/llama-3.1-405b-fp8-tp8pp1 ")
    assert " --dtype bf16 --quant fp8 --tp 8 " in command and "--pp" not in command
    notes = page.inner_text("#build-notes")
    assert "download meta-llama/Llama-3.1-405B-Instruct" in notes and "yet" not in notes
    query = page.eval_on_selector("#result", "el => el.dataset.query")
    with urllib.request.urlopen(f"{plan_server}/api/plan?{query}", timeout=10) as response:
        rec = json.loads(response.read())["recommendation"]
    assert rec["build_command"] == command and notes == "\n".join(rec["build_notes"])

    page.select_option("#gpu", "a100-80gb")
    _settle(page, gpu="a100-80gb", precision="fp8")
    assert "no FP8 tensor cores" in page.inner_text("#notes")
    assert "A100" in page.inner_text("#gpu-info")

    page.fill("#isl", "-5")
    _settle(page, isl="-5")
    assert "--isl must be a positive integer" in page.inner_text("#verdict")

    page.select_option("#model", "llama-3.1-8b")
    page.select_option("#num_gpus", "1")
    page.fill("#isl", "4096")
    _settle(page, model="llama-3.1-8b", num_gpus="1", isl="4096")
    command = page.inner_text("#build-command")
    assert "--max-input-len 4096" in command and "--dtype bf16 --quant fp8" in command
    assert "yet" not in page.inner_text("#build-notes")
    assert page.locator("#layouts tbody tr.best").count() == 1


def test_page_works_mounted_under_a_prefix(browser):
    """As `ingot serve` would mount it: the page's relative API links follow the prefix."""
    server = make_server("127.0.0.1", 0, prefix="/plan")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        tab = _open(browser, f"http://127.0.0.1:{server.server_address[1]}/plan")
        assert tab.url.endswith("/plan/")
        assert tab.inner_text("#verdict").startswith("Fits:")
        tab.select_option("#model", "mixtral-8x7b")
        _settle(tab, model="mixtral-8x7b")
        # It fits (TP2), but `ingot build` has no Mixtral model: the note names the ones it has.
        assert tab.inner_text("#verdict").startswith("Fits: TP2 PP1")
        assert "cannot build this plan yet" in tab.inner_text("#build-command")
        assert "does not build MixtralForCausalLM yet (it builds LlamaForCausalLM" in tab.inner_text("#build-notes")
        tab.select_option("#model", "qwen2.5-7b")
        tab.select_option("#precision", "fp8")
        _settle(tab, model="qwen2.5-7b", precision="fp8")
        assert tab.inner_text("#build-command").startswith("ingot build ./Qwen2.5-7B-Instruct ")
    finally:
        server.shutdown()
        server.server_close()
