"""The report page in a real browser: headless Chromium driven by selenium.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and the ``selenium`` package (the dev
extra); ``.ci/run`` installs the browser. Skipped, with the reason, where any of them is missing.
Nothing is downloaded at test time: the driver and browser paths are given explicitly, so
selenium's own driver manager never runs. The screenshot is kept under ``logs/test-artifacts/``
(or ``$FIRM_LITE_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from firm_lite.report import make_report
from firm_lite.report.summary import fmt_estimate
from tests.report_data import MALICIOUS, comparison_inputs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1800")
ARTIFACTS = Path(os.environ.get("FIRM_LITE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "logs" /
                                "test-artifacts"))


def _missing() -> str | None:
    if CHROMIUM is None or DRIVER is None:
        return "needs Chromium and its driver: apt-get install -y chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium: pip install -e '.[dev]'"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder = tmp_path_factory.mktemp("report")
    data = comparison_inputs(folder)
    run = make_report([data.good, data.poor], manifests=[data.manifest], out=folder / "report.html")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={folder / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        driver.get((folder / "report.html").as_uri())
        yield driver, data, run.summary
    finally:
        driver.quit()


def _cards(driver) -> list[str]:
    return [c.get_attribute("data-id") for c in driver.find_elements("css selector", "#gallery .card")]


def _select(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(value)


def test_page_loads_without_errors_and_shows_the_leaderboard(page) -> None:
    driver, _, summary = page
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    rows = driver.find_elements("css selector", "#leaderboard tbody tr")
    assert [r.get_attribute("data-model") for r in rows] == ["good", "poor"]
    for row, expected in zip(rows, summary["leaderboard"], strict=True):
        cme = row.find_element("css selector", 'td[data-metric="cme"]').text
        assert cme.startswith(fmt_estimate(expected["metrics"]["cme"]))
        assert row.find_element("css selector", 'td[data-metric="parse_failures"]').text == \
            str(expected["parse_failures"]["any"])
    verdict = driver.find_element("css selector", "#comparisons td.verdict").text
    assert verdict == "good better"


def test_paging_sorting_and_filtering_change_what_is_shown(page) -> None:
    driver, data, _ = page
    assert _cards(driver)[:2] == ["pair-000", "pair-001"] and len(_cards(driver)) == 25
    assert driver.find_element("id", "shown-count").text == "1-25 of 60 matching pairs (60 in all)"
    driver.find_element("id", "next").click()
    assert _cards(driver)[0] == "pair-025"

    _select(driver, "sort", "cme-desc")
    _select(driver, "sort-model", "1")  # the poor model
    assert _cards(driver)[0] == data.highest_poor_id
    _select(driver, "sort", "dis")
    assert _cards(driver)[0] == data.most_disputed_id

    _select(driver, "category", "style")
    chips = {c.text for c in driver.find_elements("css selector", "#gallery .chip")}
    assert chips == {"style"}
    assert driver.find_element("id", "shown-count").text.endswith("of 20 matching pairs (60 in all)")
    _select(driver, "category", "")
    driver.find_element("id", "only-parse").click()
    assert _cards(driver) == [data.parse_fail_id]
    assert driver.find_element("css selector", "#gallery .badge").text == "answer not parseable"
    driver.find_element("id", "only-parse").click()
    driver.find_element("id", "only-missing").click()
    assert _cards(driver) == [data.missing_id]
    assert driver.find_element("css selector", "#gallery .placeholder.missing").text == "image missing"
    driver.find_element("id", "only-missing").click()
    driver.find_element("id", "search").send_keys("poor reasoning 41")
    assert _cards(driver) == ["pair-041"]


def test_malicious_instruction_is_text_and_thumbnails_open(page) -> None:
    driver, data, _ = page
    search = driver.find_element("id", "search")
    search.clear()
    search.send_keys("__pwned")
    assert _cards(driver) == [data.malicious_id]
    card = driver.find_element("css selector", "#gallery .card")
    assert card.find_element("css selector", ".instruction").text == MALICIOUS
    assert driver.execute_script("return window.__pwned === undefined")
    assert not driver.find_elements("css selector", '#gallery img[src="x"]')
    card.find_element("css selector", "figure img").click()
    assert driver.find_element("id", "lightbox").is_displayed()
    driver.find_element("id", "lightbox").click()
    assert not driver.find_element("id", "lightbox").is_displayed()
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_screenshot_is_saved(page) -> None:
    driver, _, _ = page
    driver.find_element("id", "search").clear()
    driver.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-browser.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
