"""The dashboard in real headless Chromium (Debian's chromium and chromedriver): it shows
the round and follows the federation live, without a reload."""

import io
import shutil

import numpy as np
import pytest
from conftest import experiment, make_devices
from PIL import Image

from fedge.config import parse_config

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def text_of(browser, element_id):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def wait_for_text(browser, element_id, expected, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(lambda b: text_of(b, element_id) == expected)


def screenshot(browser):
    return Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")


def box_of(browser, element_id):
    """Where the element is drawn on the page, in screenshot pixels."""
    from selenium.webdriver.common.by import By

    r = browser.find_element(By.ID, element_id).rect
    return tuple(int(v) for v in (r["x"], r["y"], r["x"] + r["width"], r["y"] + r["height"]))


def test_dashboard_shows_the_round_and_updates_live(federation, tmp_path, browser):
    data = experiment(name="dashboard", rounds=2)
    server = federation(data)
    fleet = make_devices(server, tmp_path, parse_config(data))
    browser.get(server.url + "/")
    wait_for_text(browser, "round-number", "Round 1")
    box = box_of(browser, "round-number")
    before = np.asarray(screenshot(browser).crop(box))

    for device in fleet:
        assert device.step()[0] == "trained"
    wait_for_text(browser, "round-number", "Round 2")  # pushed by server-sent events
    wait_for_text(browser, "devices-enrolled", "3")
    assert text_of(browser, "round-progress") == "0 of 3 (quorum 3)"
    rows = text_of(browser, "history").splitlines()
    assert rows[0].split()[:4] == ["1", "0", "closed", "3"]
    image = screenshot(browser)
    image.save(tmp_path / "dashboard.png")
    shot, after = np.asarray(image), np.asarray(image.crop(box))

    # Not blank: many colours, and the round number is drawn (dark text on white) in its
    # box, differently from when it said "Round 1".
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50
    assert after.min() < 100 < after.max()
    assert not np.array_equal(before, after)
    for device in fleet:
        device.close()
