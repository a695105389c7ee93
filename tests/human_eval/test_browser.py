"""The human evaluation page in a real headless Chromium: one point-wise, one pair-wise session."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from esevo_ray.config import JUDGE_DIMENSIONS
from tests.serving.conftest import API_KEY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
DIMS = list(JUDGE_DIMENSIONS)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _page(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{url}/human")
    wait = WebDriverWait(browser, 30)
    key = browser.find_element(By.ID, "apikey")
    wait.until(lambda d: key.is_displayed())  # the server asks for a key: one is configured
    key.send_keys(API_KEY)
    browser.find_element(By.ID, "rater").send_keys("browser-rater")
    return wait, By


def _say(browser, wait, By, text: str, turns: int) -> None:
    box = browser.find_element(By.ID, "message")
    wait.until(lambda d: box.is_displayed())
    box.send_keys(text)
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_element(By.ID, "turn-count").text.startswith(f"Turns: {turns} "))


def _session_id(browser) -> str:
    return browser.execute_script("return localStorage.getItem('esevo-session')")


def test_pointwise_and_pairwise_sessions_in_chromium(served, browser):
    wait, By = _page(browser, served.url)

    browser.find_element(By.ID, "start-pointwise").click()
    _say(browser, wait, By, "I have been feeling lonely since I moved.", 1)
    assert browser.find_element(By.ID, "rating-form").is_displayed() is False
    _say(browser, wait, By, "I don't know anyone in this city.", 2)
    form = browser.find_element(By.ID, "rating-form")
    wait.until(lambda d: form.is_displayed())
    point_sid = _session_id(browser)
    # Ticks given before a reload are there after it, not sent yet.
    for i, dim in enumerate(DIMS[:3]):
        browser.find_element(By.ID, f"{dim}-{1 + i % 5}").click()
    browser.refresh()
    wait.until(lambda d: "Resumed your last session" in d.find_element(By.ID, "status").text)
    form = browser.find_element(By.ID, "rating-form")
    checked = "#likert-rows input:checked"
    ticked = [e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, checked)]
    assert ticked == [f"{dim}-{1 + i % 5}" for i, dim in enumerate(DIMS[:3])]
    for i, dim in enumerate(DIMS[3:], start=3):
        browser.find_element(By.ID, f"{dim}-{1 + i % 5}").click()
    # A double click sends the rating once (the second would be refused as a conflict).
    browser.execute_script(
        "const b = document.getElementById('submit-rating'); b.click(); b.click();"
    )
    wait.until(lambda d: "rating is saved" in d.find_element(By.ID, "status").text)
    sent = "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/ratings')).length"
    assert browser.execute_script(sent) == 1
    assert _session_id(browser) is None  # rated: the next page load starts afresh

    # The next session on the same page: its form does not come with the last one's ticks.
    browser.find_element(By.ID, "start-pointwise").click()
    wait.until(lambda d: _session_id(d) not in (None, point_sid))
    again_sid = _session_id(browser)
    _say(browser, wait, By, "Work has been overwhelming.", 1)
    _say(browser, wait, By, "I never get a break.", 2)
    wait.until(lambda d: form.is_displayed())
    assert not browser.find_elements(By.CSS_SELECTOR, "#likert-rows input:checked")
    assert "consistent with the ongoing conversation" in form.text  # the paper's criteria

    browser.find_element(By.ID, "start-pairwise").click()
    wait.until(lambda d: _session_id(d) not in (None, point_sid, again_sid))
    _say(browser, wait, By, "My exams are next week and I can't focus.", 1)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".pair .bot")) == 2
    browser.find_element(By.ID, "vote-A").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#reply-0-A.kept"))
    _say(browser, wait, By, "Thanks, that helps a bit.", 2)
    browser.find_element(By.ID, "vote-tie").click()
    browser.find_element(By.ID, "continue-B").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#reply-1-B.kept"))
    pair_sid = _session_id(browser)

    # A new tab (or a restarted browser) has no key yet: the session waits for it, kept.
    from selenium.webdriver.common.keys import Keys

    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    status = browser.find_element(By.ID, "status")
    wait.until(lambda d: "enter the API key to resume" in status.text)
    assert _session_id(browser) == pair_sid
    browser.find_element(By.ID, "apikey").send_keys(API_KEY + Keys.TAB)
    wait.until(lambda d: "Resumed your last session (rater: browser-rater)" in status.text)
    assert browser.find_element(By.ID, "turn-count").text.startswith("Turns: 2 (2 voted;")
    assert browser.find_element(By.ID, "rater").get_attribute("value") == "browser-rater"

    # The next rater on this browser is not put in the last rater's session; the first
    # name typed back brings it back.
    rater = browser.find_element(By.ID, "rater")
    rater.clear()
    rater.send_keys("second-rater" + Keys.TAB)
    wait.until(lambda d: "Another rater: start a new session" in status.text)
    assert _session_id(browser) is None
    assert not browser.find_element(By.ID, "compose").is_displayed()
    rater.clear()
    rater.send_keys("browser-rater" + Keys.TAB)
    wait.until(lambda d: "Back in your session" in status.text)
    assert _session_id(browser) == pair_sid
    rater.clear()
    rater.send_keys("second-rater" + Keys.TAB)
    wait.until(lambda d: "Another rater: start a new session" in status.text)
    browser.find_element(By.ID, "start-pointwise").click()
    wait.until(lambda d: _session_id(d) not in (None, pair_sid))
    second_sid = _session_id(browser)

    conn = sqlite3.connect(served.db)
    try:
        mode, rater = conn.execute(
            "SELECT mode, rater FROM sessions WHERE session_id = ?", (point_sid,)
        ).fetchone()
        assert (mode, rater) == ("pointwise", "browser-rater")
        assert conn.execute(
            "SELECT rater FROM sessions WHERE session_id = ?", (second_sid,)
        ).fetchone() == ("second-rater",)
        assert conn.execute(
            "SELECT user_text FROM turns WHERE session_id = ? ORDER BY turn_index", (point_sid,)
        ).fetchall() == [
            ("I have been feeling lonely since I moved.",),
            ("I don't know anyone in this city.",),
        ]
        ratings = dict(
            conn.execute(
                "SELECT dimension, score FROM ratings WHERE session_id = ?", (point_sid,)
            ).fetchall()
        )
        assert ratings == {dim: 1 + i % 5 for i, dim in enumerate(DIMS)}
        votes = conn.execute(
            "SELECT turn_index, choice, continue_with FROM votes "
            "WHERE session_id = ? ORDER BY turn_index",
            (pair_sid,),
        ).fetchall()
        assert votes == [(0, "A", "A"), (1, "tie", "B")]
    finally:
        conn.close()
