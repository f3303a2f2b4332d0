"""The status page (`GET /`) in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) loads it from a running server, finds every
deployment and every replica where it was placed (the slots of a simulated card, the
CPU, pending with its reason), logs in with the API token, and sees the figures move
under load. The screenshot is kept at target/status-page.png."""
import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By

from conftest import ROOT

TOKEN = "status-page-api-token"
CONFIG = """
[server]
metrics_interval_s = 1

# A name with markup in it: the page shows it as text.
[server.resources]
"<b id='injected'>licence</b>" = 2

[[deployments]]
name = "quarters"
num_replicas = 4
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_gpus = 0.25

[[deployments]]
name = "celsius"
num_replicas = 2
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_cpus = 0
[deployments.batching]
max_batch_size = 8

[[deployments]]
name = "waiting"
fallback = "none"
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_gpus = 0.5
"""


def browser(tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("the page test needs Debian's chromium and chromium-driver (scripts/test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def fresh(check):
    """Runs `check` again when the page redrew what it was reading (every 2 s it
    replaces its sections, and a handle found before a redraw is stale after it)."""
    for _ in range(5):
        try:
            return check()
        except StaleElementReferenceException:
            time.sleep(0.1)
    return check()


def text(driver, css):
    """The text of the element `css` selects, read in one step in the page."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.textContent;", css)


def until(check, timeout=20.0, what="the page"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never got there")
        time.sleep(0.2)


def infer(url, model, value):
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [value]}]})
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer", data=body.encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request) as r:
        return json.load(r)


def test_the_status_page_shows_every_replica_and_moves_under_load(prism, tmp_path):
    config = tmp_path / "prism.toml"
    config.write_text(CONFIG)
    s = prism(config, env={"PRISM_API_TOKEN": TOKEN}, args=["--simulate-gpus", "1x80GiB"])
    driver = browser(tmp_path)
    try:
        driver.get(f"http://{s.url}/")
        assert driver.title == "Prism"
        # The data routes need the token: the page asks for it.
        login = until(lambda: driver.find_element(By.ID, "login").is_displayed() and driver.find_element(By.ID, "login"))
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        login.submit()
        until(lambda: int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-refreshed") or 0) >= 1)

        fresh(lambda: layout(driver))

        # Load: the figures move (req/s and p99 from the server's ring buffers).
        def rps():
            cell = text(driver, '#deployments tr[data-model="celsius"] [data-field="rps"]')
            return cell not in (None, "–", "0.0") and float(cell)

        stop = threading.Event()

        def load():
            i = 0
            while not stop.is_set():
                infer(s.url, "celsius", float(i))
                i += 1

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            assert until(rps, timeout=30, what="celsius's requests/s") > 0
            # And the last minutes are drawn (two points make a line).
            until(lambda: driver.find_elements(By.CSS_SELECTOR, '#deployments tr[data-model="celsius"] svg.spark path'),
                  timeout=30, what="celsius's sparkline")
            p99 = text(driver, '#deployments tr[data-model="celsius"] [data-field="p99"]')
            assert float(p99) > 0, p99
            objects = text(driver, '[data-field="store-objects"]')
            assert objects.isdigit(), objects
        finally:
            stop.set()
            for w in workers:
                w.join()
        shot = ROOT / "target" / "status-page.png"
        shot.parent.mkdir(exist_ok=True)
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        # Script errors fail the test; the 401s the page met before it had the token do not.
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "status of 401" not in e["message"]]
        assert not logs, logs
    finally:
        driver.quit()


def layout(driver):
    """Every deployment and every replica where it was placed."""
    rows = {r.get_attribute("data-model") for r in driver.find_elements(By.CSS_SELECTOR, "#deployments tr[data-model]")}
    assert rows == {"quarters", "celsius", "waiting"}, rows
    # Four quarters on the card's slots, each a quarter of its width.
    card = driver.find_element(By.CSS_SELECTOR, '#gpus [data-gpu="0"]')
    slots = card.find_elements(By.CSS_SELECTOR, ".slot")
    assert sorted(x.get_attribute("data-replica") for x in slots) == [f"quarters#{i}" for i in range(4)]
    widths = [x.size["width"] for x in slots]
    assert max(widths) - min(widths) <= 2 and sum(widths) > 0.9 * card.find_element(By.CSS_SELECTOR, ".slots").size["width"]
    assert "100% placed" in card.text, card.text
    # Two CPU replicas; the one that found no room waits, saying why.
    cpu = driver.find_element(By.ID, "cpu")
    assert sorted(x.get_attribute("data-replica") for x in cpu.find_elements(By.CSS_SELECTOR, ".chip:not(.pending)")) == [
        "celsius#0", "celsius#1"]
    (pending,) = cpu.find_elements(By.CSS_SELECTOR, ".chip.pending")
    assert pending.get_attribute("data-replica") == "waiting#0"
    assert "room" in cpu.text or "GPU" in cpu.text, cpu.text
    assert driver.find_element(By.CSS_SELECTOR, '#resources [data-resource="GPU"]')
    assert "<b id='injected'>licence</b>" in driver.find_element(By.ID, "resources").text
    assert not driver.find_elements(By.ID, "injected"), "a server string became markup"
