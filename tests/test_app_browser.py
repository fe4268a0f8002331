"""The interactive app in a real browser: `icmoe-sam app` serves a tiny IC-MoE model, headless Chromium (Debian's
`chromium` and `chromium-driver`, driven by Selenium, nothing downloaded) opens a bundled image, draws a box with two
clicks, sees the mask overlaid, exports the label map and downloads it."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app needs the [app] extra (gradio)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from app_fixtures import save_app_models  # noqa: E402
from modeling_icmoe.annotation import PROMPT_COLOURS  # noqa: E402
from modeling_icmoe.app import display_zoom  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "training" / "data" / "mr_brain_lesion" / "images" / "mr_brain_lesion_000.png"
ORIGINAL = np.array(Image.open(IMAGE).convert("RGB"))
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
BOX = (40, 76, 72, 106)  # x0, y0, x1, y1 around the image's lesion (52, 88, 59, 94)
# Seconds to wait for the server to start and for each answer of the page.
SERVER_START_S, PAGE_WAIT_S = 120, 60

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs headless Chromium and its driver: apt-get install chromium chromium-driver (.ci/run installs them)",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_models(tmp_path_factory):
    return save_app_models(tmp_path_factory.mktemp("app-models"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, app_models):
    """`icmoe-sam app` on a free local port, as a user starts it; stopped after the module."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app-server") / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "modeling_icmoe.cli", "app", "--model", str(app_models["prompted"]), "--port",
             str(port)], cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the app did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def _status(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value")


def _wait_for_status(driver, pattern: str) -> re.Match:
    WebDriverWait(driver, PAGE_WAIT_S).until(lambda d: re.search(pattern, _status(d)))
    return re.search(pattern, _status(driver))


def _shown_image(driver) -> np.ndarray:
    """The slice as the page shows it now (the PNG the server sent), at the slice's own size (the page enlarges it by
    `display_zoom`, each pixel a block)."""
    source = driver.find_element(By.CSS_SELECTOR, "#slice-view img").get_attribute("src")
    if source.startswith("data:"):
        data = base64.b64decode(source.split(",", 1)[1])
    else:
        data = httpx.get(source, timeout=10).content
    zoom = display_zoom(ORIGINAL.shape)
    shown = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    assert shown.shape == (ORIGINAL.shape[0] * zoom, ORIGINAL.shape[1] * zoom, 3)
    return shown[::zoom, ::zoom]


def _click_pixel(driver, x: int, y: int) -> None:
    """A click on the centre of pixel (x, y) of the slice, where the browser draws it: enlarged by the page's zoom,
    then fitted into the element (`object-fit`, centred)."""
    image = driver.find_element(By.CSS_SELECTOR, "#slice-view img")
    width, height, natural_width, natural_height, fit = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.width, r.height, arguments[0].naturalWidth, arguments[0].naturalHeight,"
        " getComputedStyle(arguments[0]).objectFit];", image)
    scale = min(width / natural_width, height / natural_height)
    if fit == "scale-down":
        scale = min(scale, 1.0)
    left, top = (width - natural_width * scale) / 2, (height - natural_height * scale) / 2
    zoom = display_zoom(ORIGINAL.shape)
    offset_x = left + (x + 0.5) * zoom * scale - width / 2  # Selenium offsets are from the element's centre
    offset_y = top + (y + 0.5) * zoom * scale - height / 2
    ActionChains(driver).move_to_element_with_offset(image, round(offset_x), round(offset_y)).click().perform()


def test_a_box_drawn_in_the_browser_gives_a_mask_overlay_and_a_downloaded_label_map(server, browser):
    started = time.monotonic()
    browser.get(server)
    upload = WebDriverWait(browser, PAGE_WAIT_S).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#scan-input input[type=file]"))
    upload.send_keys(str(IMAGE))
    _wait_for_status(browser, r"Opened mr_brain_lesion_000: an image of 128 x 128 pixels")
    original = ORIGINAL
    assert (_shown_image(browser) == original).all()  # nothing overlaid yet

    _click_pixel(browser, *BOX[:2])
    assert _wait_for_status(browser, r"Box corner at \((\d+), (\d+)\)").groups() == tuple(str(v) for v in BOX[:2])
    _click_pixel(browser, *BOX[2:])
    pixels = int(_wait_for_status(browser, r"mask of (\d+) pixels").group(1))
    assert pixels > 0
    WebDriverWait(browser, PAGE_WAIT_S).until(lambda d: not (_shown_image(d) == original).all())
    shown = _shown_image(browser)
    assert shown.shape == original.shape
    changed = (shown != original).any(axis=-1)
    assert changed.sum() >= pixels  # the mask's pixels, tinted, and the box's outline
    assert (shown[BOX[1], BOX[0] : BOX[2] + 1] == PROMPT_COLOURS["box"]).all()  # the box's top edge

    browser.find_element(By.CSS_SELECTOR, "button#export").click()
    _wait_for_status(browser, r"Wrote mr_brain_lesion_000_labels\.png")
    link = WebDriverWait(browser, PAGE_WAIT_S).until(lambda d: d.find_element(By.CSS_SELECTOR, "#result-file a"))
    link.click()
    downloaded = browser.downloads / "mr_brain_lesion_000_labels.png"
    WebDriverWait(browser, PAGE_WAIT_S).until(lambda d: downloaded.is_file())
    time.sleep(0.5)  # the file is renamed from .crdownload when complete; give the write a moment
    labels = np.array(Image.open(downloaded))
    assert labels.shape == original.shape[:2]
    assert set(np.unique(labels)) <= {0, 1} and int((labels == 1).sum()) == pixels
    print(f"browser test: {time.monotonic() - started:.1f} s in the browser")
