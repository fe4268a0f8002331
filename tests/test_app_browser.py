"""The interactive app in a real browser: it serves tiny models, and headless Chromium (Debian's
`chromium` and `chromium-driver`, driven by Selenium, nothing downloaded) uses the page. With a prompted IC-MoE it
opens a bundled image, draws a box with two clicks, sees the mask overlaid, exports the label map and downloads it;
with a prompt-free one, served by the Space's `app.py`, it opens a NIfTI volume, moves the slice slider, segments every
class in the volume and downloads the NIfTI."""

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
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app needs the [app] extra (gradio)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from app_fixtures import save_app_models  # noqa: E402
from modeling_icmoe.medical.annotation import PROMPT_COLOURS  # noqa: E402
from modeling_icmoe.medical.app import display_zoom  # noqa: E402
from volume_fixtures import SHAPE, save_nifti, volume_arrays  # noqa: E402

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
pytestmark = [pytestmark, pytest.mark.slow]  # a browser and a Gradio server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_models(tmp_path_factory):
    return save_app_models(tmp_path_factory.mktemp("app-models"))


@pytest.fixture(scope="module")
def serve(tmp_path_factory, app_models):
    """`serve(kind)`: the URL of the app serving the `kind` model on a free local port, started on first use as a user
    starts it: `icmoe-sam app --model DIR` for the prompted model, and for the prompt-free one the Space's `app.py`
    as a Space runs it (`python app.py`, the model and port in its variables). Every server stops after the module."""
    servers: dict[str, tuple[str, subprocess.Popen]] = {}
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def start(kind: str) -> str:
        if kind in servers:
            return servers[kind][0]
        port = _free_port()
        log = tmp_path_factory.mktemp("app-server") / "server.log"
        if kind == "prompted":
            command, variables = [sys.executable, "-m", "modeling_icmoe.medical.cli", "app", "--model", str(app_models[kind]),
                                  "--port", str(port)], {}
        else:
            command = [sys.executable, "app.py"]
            variables = {"ICMOE_SAM_MODEL": str(app_models[kind]), "GRADIO_SERVER_NAME": "127.0.0.1",
                         "GRADIO_SERVER_PORT": str(port)}
        with open(log, "w") as output:
            process = subprocess.Popen(command, cwd=REPO, env={**env, **variables}, stdout=output,
                                       stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        servers[kind] = (url, process)
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the app did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    yield start
    for _, process in servers.values():
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


def _shown_image(driver, size: tuple[int, int] = ORIGINAL.shape[:2]) -> np.ndarray:
    """The slice as the page shows it now (the PNG the server sent), at the slice's own `size` (the page enlarges it
    by `display_zoom`, each pixel a block)."""
    source = driver.find_element(By.CSS_SELECTOR, "#slice-view img").get_attribute("src")
    if source.startswith("data:"):
        data = base64.b64decode(source.split(",", 1)[1])
    else:
        data = httpx.get(source, timeout=10).content
    zoom = display_zoom(size)
    shown = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    assert shown.shape == (size[0] * zoom, size[1] * zoom, 3)
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


def _open(driver, url: str, path: Path) -> None:
    driver.get(url)
    upload = WebDriverWait(driver, PAGE_WAIT_S).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#scan-input input[type=file]"))
    upload.send_keys(str(path))


def _export_and_download(driver, export_format: str, name: str) -> Path:
    """Chooses `export_format`, exports, and downloads the file offered as `name`."""
    driver.find_element(By.XPATH, f"//*[@id='export-format']//label[contains(., '{export_format}')]").click()
    driver.find_element(By.CSS_SELECTOR, "button#export").click()
    _wait_for_status(driver, f"Wrote {re.escape(name)}")
    link = WebDriverWait(driver, PAGE_WAIT_S).until(lambda d: d.find_element(By.CSS_SELECTOR, "#result-file a"))
    link.click()
    downloaded = driver.downloads / name
    WebDriverWait(driver, PAGE_WAIT_S).until(lambda d: downloaded.is_file())
    time.sleep(0.5)  # the file is renamed from .crdownload when complete; give the write a moment
    return downloaded


def test_a_box_drawn_in_the_browser_gives_a_mask_overlay_and_a_downloaded_label_map(serve, browser):
    url = serve("prompted")
    started = time.monotonic()
    _open(browser, url, IMAGE)
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

    labels = np.array(Image.open(_export_and_download(browser, "PNG", "mr_brain_lesion_000_labels.png")))
    assert labels.shape == original.shape[:2]
    assert set(np.unique(labels)) <= {0, 1} and int((labels == 1).sum()) == pixels
    print(f"browser test: {time.monotonic() - started:.1f} s in the browser")


def test_a_prompt_free_model_segments_a_volume_and_its_nifti_downloads(serve, browser, tmp_path):
    url = serve("prompt_free")
    started = time.monotonic()
    nifti = save_nifti(volume_arrays()[0], tmp_path / "case.nii.gz")
    _open(browser, url, nifti)
    _wait_for_status(browser, r"Opened case: a volume of 6 slices of 24 x 28 pixels")
    middle = _shown_image(browser, (28, 24))
    slider = browser.find_element(By.CSS_SELECTOR, "#slice-slider input[type=number]")
    slider.clear()
    slider.send_keys("1", Keys.ENTER)  # slice 1: another slice shown
    WebDriverWait(browser, PAGE_WAIT_S).until(lambda d: not (_shown_image(d, (28, 24)) == middle).all())
    before = _shown_image(browser, (28, 24))
    browser.find_element(By.CSS_SELECTOR, "button#everything-volume").click()
    _wait_for_status(browser, r"Segmented all 6 slices; classes found: .*liver")
    WebDriverWait(browser, PAGE_WAIT_S).until(lambda d: not (_shown_image(d, (28, 24)) == before).all())
    written = nib.load(_export_and_download(browser, "NIfTI", "case_labels.nii.gz"))
    assert written.shape == SHAPE and np.allclose(written.affine, nib.load(nifti).affine)
    assert set(np.unique(np.asarray(written.dataobj))) > {0}
    print(f"prompt-free browser test: {time.monotonic() - started:.1f} s in the browser")
