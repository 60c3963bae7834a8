"""The chat UI in headless Debian Chromium, against a real `chatrec serve` on a tiny bundle.

A user edits the history through catalog search, types a request, watches the answer stream in,
sees item cards whose titles are catalog titles, clicks like, and the like lands in
`BUNDLE/logs/feedback.jsonl`. Then the server is stopped under the running UI, and the page says
so in one plain line. Screenshots go to the test's tmp dir (docs/ui.png is one of them).

Cards come from the items the answer names, or (a random tiny model rarely writes one) from the
server's top-K for the same request and history. A first test drives the UI's client against the
same server without a browser, pinning the protocol the UI relies on.

Needs `/usr/bin/chromium` (Debian's `chromium` package; `./install.sh --dev` installs it) and
Playwright for Python; no browser is downloaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic"]

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium chromium-driver, "
           "or ./install.sh --dev)")

playwright_sync = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install 'chatrec[dev]')")
pytest.importorskip("gradio", reason="needs gradio (pip install 'chatrec[ui]')")
pytest.importorskip("fastapi", reason="needs the server (pip install 'chatrec[serve]')")

from chatrec.errors import DataError  # noqa: E402
from ui.catalog import RemoteCatalog  # noqa: E402
from ui.client import ChatrecClient, ChatRequestOptions, EndpointError  # noqa: E402
from ui.local_server import LocalServer, free_port, wait_for_health  # noqa: E402

expect = playwright_sync.expect


# fixtures ----------------------------------------------------------------------------------------
def _start_ui(endpoint: str, bundle: Path | None, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`chatrec ui --endpoint URL` as a user runs it, on a free loopback port, in its own process group."""
    port = free_port()
    cmd = [sys.executable, "-m", "chatrec", "ui", "--endpoint", endpoint, "--port", str(port), "--user-id", "e2e-user",
           "--max-tokens", "64"]
    if bundle is not None:
        cmd += ["--bundle", str(bundle)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ui(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    try:
        wait_for_health(url, timeout=120, proc=proc)
    except Exception as exc:
        raise AssertionError(f"the UI did not start: {exc}\n{log_path.read_text(errors='replace')[-3000:]}") from None


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chatrec.testing import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("ui-bundle")).root


@pytest.fixture(scope="module")
def live_ui(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real server (transformers engine) on the tiny bundle and `chatrec ui` pointing at it."""
    logs = tmp_path_factory.mktemp("ui-logs")
    server = LocalServer(tiny_bundle, engine="transformers", start_timeout=180)
    # start the UI first: it does not need the server until the page loads, so both start together
    ui_proc, ui_url = _start_ui(server.url, tiny_bundle, logs / "ui.log")
    try:
        with server:
            _wait_ui(ui_proc, ui_url, logs / "ui.log")
            yield {"url": ui_url, "server": server, "bundle": tiny_bundle}
    finally:
        _stop(ui_proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


_RECORD_CHAT_TEXT = """() => {
  window.__chatTexts = [];
  const chat = document.querySelector('#chatrec-chat');
  const seen = () => {
    const bots = chat.querySelectorAll('.bot');
    const last = bots.length ? bots[bots.length - 1].innerText : '';
    const texts = window.__chatTexts;
    if (texts[texts.length - 1] !== last) texts.push(last);
  };
  new MutationObserver(seen).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


# tests -------------------------------------------------------------------------------------------
def test_client_speaks_the_servers_protocol(live_ui: dict[str, Any]) -> None:
    """The UI's client against the real server: chat stream, items, top-K, feedback, errors."""
    bundle: Path = live_ui["bundle"]
    catalog = pd.read_parquet(bundle / "catalog.parquet")
    client = ChatrecClient(live_ui["server"].url, timeout=120)
    assert client.health()
    assert client.model()
    history = [{"item_id": str(catalog["item_id"].iloc[0]), "action": "like"}]
    deltas = list(client.stream_chat([{"role": "user", "content": "something tense"}],
                                     ChatRequestOptions(history=history, user_id="proto-user", max_tokens=24)))
    assert sum(bool(d.text) for d in deltas) >= 2
    assert deltas[-1].items is not None and deltas[-1].finish_reason in ("stop", "length")
    assert {i["item_id"] for i in deltas[-1].items} <= set(catalog["item_id"])
    top = client.recommend(history, k=3, request="something tense")
    assert len(top) == 3 and {i["title"] for i in top} <= set(catalog["title"])
    assert history[0]["item_id"] not in {i["item_id"] for i in top}  # seen items are excluded by default
    assert client.feedback("proto-user", str(catalog["item_id"].iloc[1]), "dislike")
    rows = [json.loads(line) for line in (bundle / "logs" / "feedback.jsonl").read_text().splitlines()]
    assert {"user_id": "proto-user", "item_id": str(catalog["item_id"].iloc[1]), "action": "dislike"}.items() \
        <= rows[-1].items()
    with pytest.raises(EndpointError, match=r"rejected the request \(400\).*nope"):
        client.recommend([{"item_id": "nope", "action": "like"}], k=3)
    with pytest.raises(EndpointError, match=r"rejected the request \(400\)"):
        list(client.stream_chat([{"role": "user", "content": "x"}],
                                ChatRequestOptions(history=[{"item_id": "nope", "action": "like"}])))
    # the server has no catalog search (yet): the UI says how to get one instead of failing
    with pytest.raises(DataError, match="--bundle"):
        RemoteCatalog(client).search("night")


@pytest.mark.browser
@needs_chromium
def test_chat_streams_shows_catalog_cards_and_records_a_like(live_ui: dict[str, Any], page: Any,
                                                            tmp_path: Path) -> None:
    bundle: Path = live_ui["bundle"]
    catalog = pd.read_parquet(bundle / "catalog.parquet")
    titles = set(catalog["title"])
    page.goto(live_ui["url"])
    expect(page.locator("#chatrec-status")).to_contain_text("Connected to", timeout=60_000)

    # edit the history: search the catalog, pick a match, add it
    picked = str(catalog["title"].iloc[3])
    search = page.locator("#chatrec-search textarea")
    search.fill(picked.split(" (")[0])
    search.press("Enter")
    match = page.locator("#chatrec-matches label", has_text=picked)
    expect(match).to_be_visible()
    match.click()
    page.locator("#chatrec-add").click()
    expect(page.locator("#chatrec-history")).to_contain_text(picked)

    # ask, and watch the answer arrive in pieces
    page.evaluate(_RECORD_CHAT_TEXT)
    page.locator("#chatrec-input textarea").fill("Something exciting for tonight, please")
    page.locator("#chatrec-send").click()
    expect(page.locator(".chatrec-card").first).to_be_visible(timeout=90_000)
    expect(page.locator("#chatrec-status")).to_contain_text("recommendation")
    states = [t for t in page.evaluate("window.__chatTexts") if t.strip() and t.strip() != "…"]
    assert len(states) >= 2, f"the answer did not stream (saw {states!r})"
    assert "<think>" not in page.locator("#chatrec-chat").inner_text()

    card_titles = [t.split(". ", 1)[1] for t in page.locator(".chatrec-card-title").all_inner_texts()]
    assert card_titles and set(card_titles) <= titles, card_titles
    liked_id = page.locator(".chatrec-card").first.get_attribute("data-item-id")
    assert liked_id in set(catalog["item_id"])
    page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)

    page.locator(".chatrec-like").first.click()
    expect(page.locator("#chatrec-status")).to_contain_text(f"Recorded like for {card_titles[0]}")
    expect(page.locator("#chatrec-history")).to_contain_text(card_titles[0])
    expect(page.locator(".chatrec-like").first).to_have_text("Liked")
    log = bundle / "logs" / "feedback.jsonl"
    deadline = time.monotonic() + 10
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not rows:
        if log.exists():
            rows = [r for r in map(json.loads, log.read_text().splitlines())
                    if r.get("item_id") == liked_id and r.get("action") == "like"]
        time.sleep(0.2)
    assert rows, f"no like for {liked_id} in {log}"
    assert rows[-1]["user_id"] == "e2e-user" and rows[-1]["timestamp"]
    page.screenshot(path=str(tmp_path / "ui-after-like.png"), full_page=True)

    # a title named in the words is linked and joins the history with the action the words imply
    named = str(catalog["title"].iloc[7])
    page.locator("#chatrec-input textarea").fill(f"I loved {named.split(' (')[0]}. Recommend something else.")
    page.locator("#chatrec-send").click()
    expect(page.locator("#chatrec-status")).to_contain_text(f"Added to your history: {named} [like]", timeout=90_000)
    expect(page.locator("#chatrec-history")).to_contain_text(named)


@pytest.mark.browser
@needs_chromium
def test_page_says_plainly_when_the_server_is_down(live_ui: dict[str, Any], page: Any, tmp_path: Path) -> None:
    """Stop the server under a running UI: on load and on send the page says so in one plain line."""
    live_ui["server"].stop()
    url = live_ui["server"].url
    page.goto(live_ui["url"])
    status = page.locator("#chatrec-status")
    expect(status).to_contain_text(f"cannot reach the chatrec server at {url}", timeout=60_000)
    page.locator("#chatrec-input textarea").fill("anything")
    page.locator("#chatrec-send").click()
    expect(page.locator("#chatrec-chat")).to_contain_text("Error: cannot reach the chatrec server")
    expect(status).to_contain_text("cannot reach the chatrec server")
    body = page.locator("body").inner_text()
    assert "Traceback" not in body and "Exception" not in body
    page.screenshot(path=str(tmp_path / "ui-down.png"), full_page=True)


# the README's screenshot -------------------------------------------------------------------------
SCREENSHOT_BUNDLE = os.environ.get("CHATREC_SCREENSHOT_BUNDLE")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ui_ml100k.png"


@pytest.mark.browser
@needs_chromium
@pytest.mark.skipif(not SCREENSHOT_BUNDLE, reason="retakes README's screenshot (docs/ui_ml100k.png) on a trained "
                    "MovieLens bundle: CHATREC_SCREENSHOT_BUNDLE=~/.cache/chatrec/bundles/default")
def test_readme_screenshot_on_the_demo_bundle(browser: Any, tmp_path: Path) -> None:
    """The UI on the default demo as `chatrec demo` serves it (engine auto): two titles and a mood,
    then a follow-up; the screenshot shows the answers' words, the cards and what was understood."""
    bundle = Path(str(SCREENSHOT_BUNDLE)).expanduser()
    catalog = pd.read_parquet(bundle / "catalog.parquet")
    titles = set(catalog["title"])
    with LocalServer(bundle, engine="auto", start_timeout=600) as server:
        ui_proc, ui_url = _start_ui(server.url, bundle, tmp_path / "ui.log")
        try:
            _wait_ui(ui_proc, ui_url, tmp_path / "ui.log")
            context = browser.new_context(viewport={"width": 1280, "height": 1100})
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(ui_url)
            expect(page.locator("#chatrec-status")).to_contain_text("Connected to", timeout=60_000)
            status = page.locator("#chatrec-status")
            page.locator("#chatrec-input textarea").fill(
                "I loved Toy Story and Aladdin. Something funny the whole family can watch, please.")
            page.locator("#chatrec-send").click()
            expect(status).to_contain_text("liked: Toy Story (1995), Aladdin (1992)", timeout=120_000)
            page.locator("#chatrec-input textarea").fill("Not those. Something older, from before 1970.")
            page.locator("#chatrec-send").click()
            expect(status).to_contain_text("before 1970", timeout=120_000)
            cards = [t.split(". ", 1)[1] for t in page.locator(".chatrec-card-title").all_inner_texts()]
            assert cards and set(cards) <= titles, cards
            chat = page.locator("#chatrec-chat").inner_text()
            assert "Toy Story" in chat and "<think>" not in chat
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            context.close()
        finally:
            _stop(ui_proc)
