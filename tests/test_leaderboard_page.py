"""The leaderboard page in a real browser: headless Chromium or Chrome (Debian's chromium and chromium-driver,
installed by .ci/run where no browser is present; GitHub's runners have Chrome) opens index.html offline, sorts
the table and loads every figure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import cli, write_yaml

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # a headless browser
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Chromium or Chrome and chromedriver"),
]


@pytest.fixture
def board(tmp_path: Path) -> Path:
    write_yaml(
        tmp_path / "reg" / "suite.yaml",
        """\
kind: suite
id: page-board
version: 1
dataset: pocket-photos
models: [efficientnet-lite0, efficientnet-lite1, efficientnet-lite2, efficientnet-lite0-random, resnet18-random]
metrics: [{name: mutual_knn, k: 5}]
reference: efficientnet-lite2
scores: [imagenet_top1]
max_samples: 24
""",
    )
    reg = ["--registry", str(tmp_path / "reg")]
    assert (
        cli(
            *reg, "run", "--suite", "page-board", "--out", tmp_path / "runs" / "page-board" / "20260101-000000"
        ).exit_code
        == 0
    )
    assert (
        cli(
            *reg,
            "leaderboard",
            "--suite",
            "page-board",
            "--runs",
            tmp_path / "runs",
            "--out",
            tmp_path / "runs" / "page-board" / "20260101-000000" / "leaderboard",
        ).exit_code
        == 0
    )
    return tmp_path / "runs" / "page-board" / "20260101-000000"


def test_page_sorts_and_shows_figures(board: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,2400",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get((board / "leaderboard" / "index.html").resolve().as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#board tbody tr")
        assert len(rows) == 5  # one row per model
        headers = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#board thead th")]
        col = headers.index("model")

        def models() -> list[str]:
            return [
                r.find_elements(By.TAG_NAME, "td")[col].text
                for r in driver.find_elements(By.CSS_SELECTOR, "#board tbody tr")
            ]

        before = models()
        driver.find_elements(By.CSS_SELECTOR, "#board thead th")[col].click()
        descending = models()  # largest first on the first click, marked by an arrow
        assert descending == sorted(before, reverse=True) and descending != before
        assert driver.find_elements(By.CSS_SELECTOR, "#board thead th")[col].text == "model \u25bc"
        driver.find_elements(By.CSS_SELECTOR, "#board thead th")[col].click()
        assert models() == sorted(before)
        assert driver.find_elements(By.CSS_SELECTOR, "#board thead th")[col].text == "model \u25b2"
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 3
        assert all(
            driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
            for img in images
        )
        shot = board / "leaderboard-screenshot.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()
