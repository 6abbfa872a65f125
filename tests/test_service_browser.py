"""The web pages in a real headless Chromium (Debian's chromium + chromium-driver,
driven by selenium): the job list with progress, a job page with its plots
and thresholds file, and the submit form.

Without chromium and chromedriver these tests skip, unless
``$PTRECLAIM_REQUIRE_BROWSER`` is set (as in CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

# tests/ is on sys.path (pytest's rootdir-relative import); importing the fixture
# registers it here.
from test_service import (
    TINY_TUNE,
    Service,
    service,  # noqa: F401 (the fixture)
    wait_state,
)

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium with the flags this closed network needs."""
    if not (CHROMIUM and DRIVER):
        if os.environ.get("PTRECLAIM_REQUIRE_BROWSER"):
            pytest.fail("PTRECLAIM_REQUIRE_BROWSER is set but chromium/chromedriver are "
                        "missing: .ci/run installs Debian's chromium and chromium-driver")
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_job_list_job_page_and_submit_form(service: Service, browser: Any) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    service.start_worker("w1")
    with service.client() as c:
        job = c.submit({**TINY_TUNE, "label": "from the API"})
        assert wait_state(c, job["id"])["state"] == "succeeded"
    # The list: the job with its progress bar at 100 %.
    browser.get(service.server.url + "/")
    row = browser.find_element(By.XPATH, f"//tr[td/a[text()='{job['id']}']]")
    assert "succeeded" in row.text and "from the API" in row.text
    assert float(row.find_element(By.TAG_NAME, "progress").get_attribute("value")) == 1.0
    # The job page: the thresholds file and the plots, loaded (not broken images).
    row.find_element(By.LINK_TEXT, job["id"]).click()
    assert browser.current_url.endswith(f"/jobs/{job['id']}")
    assert "kind: soft_hard" in browser.find_element(By.ID, "thresholds").text
    images = browser.find_elements(By.CSS_SELECTOR, ".plots img")
    assert {i.get_attribute("alt") for i in images} >= {"history.png"}
    for img in images:
        assert browser.execute_script("return arguments[0].naturalWidth", img) > 100
    assert "best.yaml" in browser.find_element(By.ID, "artifacts").text
    # The form: a wrong token is refused with one line, the right one submits.
    browser.get(service.server.url + "/submit")
    browser.find_element(By.ID, "trials").clear()
    browser.find_element(By.ID, "trials").send_keys("2")
    browser.find_element(By.ID, "seeds").send_keys("1")
    browser.find_element(By.ID, "allow_few_seeds").click()
    browser.find_element(By.XPATH, "//option[@value='redis_jemalloc']").click()
    browser.find_element(By.ID, "label").send_keys("from the form")
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.ID, "submit").click()
    from selenium.webdriver.support.ui import WebDriverWait

    # The refusal comes back as a new page: wait for it rather than race the load.
    error = WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.ID, "error"))[0]
    assert "Bearer" in error.text
    assert browser.find_element(By.ID, "label").get_attribute("value") == "from the form"
    browser.find_element(By.ID, "token").send_keys(service.token)
    browser.find_element(By.ID, "submit").click()
    # Wait for the refusal page to go (a redirect to the job, or a new page with a new
    # error): reading the old page's elements after the click races its unload.
    from selenium.webdriver.support import expected_conditions as ec

    WebDriverWait(browser, 60).until(ec.staleness_of(error))
    errors = browser.find_elements(By.ID, "error")
    assert "/jobs/" in browser.current_url, errors[0].text if errors else browser.page_source
    new_id = browser.current_url.rsplit("/", 1)[1]
    with service.client() as c:
        new = wait_state(c, new_id)
    assert new["state"] == "succeeded" and new["label"] == "from the form"
    assert new["spec"]["trials"] == 2 and new["spec"]["input"]["name"] == "redis_jemalloc"
