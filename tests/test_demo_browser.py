"""The web demo in a real browser: headless Chromium driven by selenium against the app served on 127.0.0.1.

Needs Debian's `chromium` and `chromium-driver` (`apt-get install -y chromium chromium-driver`; `.ci/run` installs
them) and the `gradio` and `selenium` packages (the dev extra). Without them the tests skip, saying what is missing,
except under `CI=true`, where they fail: CI must run them.

One server (the tiny example model) and one browser serve all tests of this module. Set
`CATSEG_DEMO_SCREENSHOT=docs/demo.png` to save the screenshot of the first test there (that is how the README's
screenshot is made).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catseg_hf.data.synthetic import render_scene


REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_MODEL = REPO_ROOT / "examples" / "tiny-shapes-catseg"
RESULT_TIMEOUT_S = 60

pytestmark = pytest.mark.timeout(300)


def _missing(reason: str) -> None:
    """Skip, or fail under CI (where the browser tests must run)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; under CI=true the browser tests must run (.ci/run installs what they need)")
    pytest.skip(reason)


def _find_browser() -> tuple[str, str]:
    browser = os.environ.get("CHROME_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        _missing(
            "no Chromium browser and driver found (looked for chromium and chromedriver on PATH, or $CHROME_BIN and "
            "$CHROMEDRIVER); install them with: apt-get install -y chromium chromium-driver"
        )
    return browser, driver


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def browser_paths():
    for module in ("gradio", "selenium"):
        try:
            __import__(module)
        except ImportError:
            _missing(f"the {module} package is not installed (pip install -e '.[dev]')")
    return _find_browser()


@pytest.fixture(scope="module")
def server(browser_paths, tmp_path_factory):
    """The demo of the tiny example model, served on a free port of 127.0.0.1 (Gradio's cache in a temporary
    folder, not in the machine's /tmp/gradio)."""
    from catseg_hf.demo import build_demo, launch

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
        page = build_demo(
            str(EXAMPLE_MODEL),
            model_name="tiny-shapes-catseg",
            is_example_model=True,
            output_dir=tmp_path_factory.mktemp("downloads"),
        )
        port = _free_port()
        launch(page, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield page, f"http://127.0.0.1:{port}/"
        finally:
            page.close()


@pytest.fixture(scope="module")
def driver(browser_paths, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium would otherwise report usage over the network
    chrome = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    chrome.set_page_load_timeout(60)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(scope="module")
def segmenter():
    import catseg_hf  # noqa: F401 - registers the task
    from transformers import pipeline

    return pipeline("zero-shot-image-segmentation", model=str(EXAMPLE_MODEL))


def expected_label_map(segmenter, image_path: Path, labels: list[str], mode: str) -> np.ndarray:
    """The pipeline's label map for the same inputs (class ids from its per-class masks)."""
    segments = segmenter(str(image_path), candidate_labels=labels, mode=mode)
    first = np.asarray(segments[0]["mask"])
    label_map = np.full(first.shape, -1, dtype=np.int64)
    for segment in segments:
        label_map[np.asarray(segment["mask"]) > 0] = labels.index(segment["label"])
    assert (label_map >= 0).all()
    return label_map


# ---------------------------------------------------------------------------------------------------- page helpers
def open_page(chrome, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.get(url)
    WebDriverWait(chrome, 60).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#run-button")))


def fill_inputs(chrome, image_path: Path | None, labels: list[str] | None, mode: str | None) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    if image_path is not None:
        chrome.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(str(image_path))
        # The upload is done when the page shows the image.
        WebDriverWait(chrome, 30).until(lambda _: chrome.find_elements(By.CSS_SELECTOR, "#image-input img"))
    if labels is not None:
        box = chrome.find_element(By.CSS_SELECTOR, "#class-names textarea")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        for index, label in enumerate(labels):
            box.send_keys(label)
            if index < len(labels) - 1:
                box.send_keys(Keys.ENTER)  # a new line (in a multi-line box, Shift+Enter submits)
        assert box.get_attribute("value") == "\n".join(labels)
    if mode is not None:
        for option in chrome.find_elements(By.CSS_SELECTOR, "#mode input[type=radio]"):
            if option.get_attribute("value") == mode:
                chrome.execute_script("arguments[0].click();", option)
                break
        else:
            raise AssertionError(f"no {mode!r} option in the mode radio")


def click_run(chrome) -> float:
    from selenium.webdriver.common.by import By

    chrome.find_element(By.CSS_SELECTOR, "#run-button").click()
    return time.perf_counter()


def status_text(chrome) -> str:
    from selenium.webdriver.common.by import By

    return chrome.find_element(By.CSS_SELECTOR, "#status").text.strip()


def wait_for_status(chrome, prefixes: tuple[str, ...] = ("Done", "Error"), previous: str | None = None) -> str:
    """The status line once it starts with one of `prefixes` (it says "Results appear here." before) and differs
    from `previous` (the line before the click, when a request follows another on the same page)."""
    from selenium.webdriver.support.ui import WebDriverWait

    def status(_):
        text = status_text(chrome)
        return text if text.startswith(prefixes) and text != previous else False

    return WebDriverWait(chrome, RESULT_TIMEOUT_S).until(status)


def downloaded_files(chrome) -> dict[str, bytes]:
    """The files the page offers for download, by name, fetched from the server as the browser would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    links = WebDriverWait(chrome, 30).until(lambda _: chrome.find_elements(By.CSS_SELECTOR, "#downloads a[download]"))
    files = {}
    for link in links:
        href = link.get_attribute("href")
        # The name the browser saves the file under: the link's `download` attribute, else the URL's last part.
        name = link.get_attribute("download") or urllib.parse.unquote(href.rsplit("/", 1)[-1])
        with urllib.request.urlopen(href, timeout=30) as response:  # 127.0.0.1 only
            files[name] = response.read()
    return files


def label_map_download(chrome) -> np.ndarray:
    files = downloaded_files(chrome)
    names = [name for name in files if name.endswith("_labels.png")]
    assert len(names) == 1 and any(name.endswith(".json") for name in files), sorted(files)
    return np.asarray(Image.open(io.BytesIO(files[names[0]])))


def assert_not_blank(png: bytes) -> Image.Image:
    screenshot = Image.open(io.BytesIO(png)).convert("RGB")
    pixels = np.asarray(screenshot)
    assert screenshot.width >= 800 and screenshot.height >= 600, screenshot.size
    # A blank or error page is one or two flat colours; the result page has text, the image and its colours.
    assert pixels.std() > 20, pixels.std()
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    return screenshot


def scene(path: Path, seed: int, size: tuple[int, int] = (120, 160)) -> Path:
    render_scene(seed, size=size, min_shapes=2, max_shapes=3)[0].save(path)
    return path


# ---------------------------------------------------------------------------------------------------- tests
def test_upload_labels_run_and_download(server, driver, segmenter, tmp_path):
    from selenium.webdriver.common.by import By

    page, url = server
    image_path = scene(tmp_path / "my scene.png", seed=53, size=(160, 160))  # a space in the name, as users' have
    labels = ["background", "red square", "green circle", "blue cross", "yellow circle"]
    open_page(driver, url)
    fill_inputs(driver, image_path, labels, mode="whole")
    started = click_run(driver)
    status = wait_for_status(driver)
    seconds = time.perf_counter() - started
    assert status.startswith("Done"), status
    print(f"\nclick-to-result on the tiny model (whole mode, 160x160 image, first request): {seconds:.2f} s")

    label_map = label_map_download(driver)
    np.testing.assert_array_equal(label_map, expected_label_map(segmenter, image_path, labels, "whole"))
    assert label_map.shape == (160, 160) and label_map.dtype == np.uint8

    # The other outputs are there: the annotated image with one entry per class present, the overlay, the table.
    present = [labels[index] for index in np.unique(label_map)]
    legend = driver.find_element(By.CSS_SELECTOR, "#annotated").text
    assert all(name in legend for name in present), (legend, present)
    table = driver.find_element(By.CSS_SELECTOR, "#classes-table").text
    assert all(name in table for name in present), (table, present)
    overlay = driver.find_element(By.CSS_SELECTOR, "#overlay img")
    assert driver.execute_script("return arguments[0].naturalWidth", overlay) >= 160

    driver.execute_script("window.scrollTo(0, 0)")
    screenshot = assert_not_blank(driver.get_screenshot_as_png())
    screenshot.save(tmp_path / "demo.png")
    target = os.environ.get("CATSEG_DEMO_SCREENSHOT")
    if target:
        # Small enough to commit: 3/4 size, 256 colours.
        small = screenshot.resize((screenshot.width * 3 // 4, screenshot.height * 3 // 4), Image.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def test_bad_input_gets_a_message_and_the_server_keeps_serving(server, driver, segmenter, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page, url = server
    open_page(driver, url)

    # No image.
    click_run(driver)
    assert "Add an image first" in wait_for_status(driver, ("Error",))

    # A file that is not an image (with an image's extension).
    broken = tmp_path / "holiday.png"
    broken.write_text("this is not a PNG")

    driver.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(str(broken))
    # Uploaded when the page shows it (as a broken image).
    WebDriverWait(driver, 30).until(lambda _: driver.find_elements(By.CSS_SELECTOR, "#image-input img"))
    click_run(driver)
    message = wait_for_status(driver, ("Error: Cannot read",))
    assert "holiday.png" in message, message

    # No class names, with a good image.
    open_page(driver, url)
    image_path = scene(tmp_path / "good.png", seed=10)
    fill_inputs(driver, image_path, [""], mode="whole")
    click_run(driver)
    assert "Type at least one class name" in wait_for_status(driver, ("Error",))

    # The same page then works.
    labels = ["background", "red square", "blue cross"]
    fill_inputs(driver, None, labels, mode=None)
    previous = status_text(driver)
    click_run(driver)
    assert wait_for_status(driver, previous=previous).startswith("Done")
    expected = expected_label_map(segmenter, image_path, labels, "whole")
    np.testing.assert_array_equal(label_map_download(driver), expected)


def test_clicking_an_example_runs_it(server, driver, segmenter):
    from selenium.webdriver.common.by import By

    from catseg_hf.demo import EXAMPLES, EXAMPLES_DIR

    page, url = server
    open_page(driver, url)
    file, names = EXAMPLES[1]
    label = ", ".join(names[1:3])
    buttons = [item for item in driver.find_elements(By.CSS_SELECTOR, "#examples button") if item.text.strip() == label]
    assert buttons, [item.text for item in driver.find_elements(By.CSS_SELECTOR, "#examples button")]
    buttons[0].click()
    assert wait_for_status(driver).startswith("Done")
    assert driver.find_element(By.CSS_SELECTOR, "#class-names textarea").get_attribute("value") == "\n".join(names)
    expected = expected_label_map(segmenter, EXAMPLES_DIR / file, list(names), "whole")
    np.testing.assert_array_equal(label_map_download(driver), expected)


def test_two_concurrent_requests_are_queued_and_both_answered(server, driver, segmenter, tmp_path):
    """Two tabs (two Gradio sessions) press Run at once; each request is held for a second inside the model call,
    so they overlap: the queue runs them one after the other, and both pages get their own, correct result."""
    page, url = server
    demo = page.segmentation_demo
    original = demo.segment
    running, most = [0], [0]
    lock = threading.Lock()

    def slow_segment(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(1.0)
            return original(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    jobs = [
        (scene(tmp_path / "first.png", seed=49), ["background", "red circle", "green triangle"], "whole"),
        # A class with a synonym ("a, b": the text encoder reads the first name).
        (scene(tmp_path / "second.png", seed=39), ["background", "blue triangle", "yellow circle, sun", "red cross"],
         "sliding"),
    ]
    demo.segment = slow_segment
    try:
        tabs = [driver.current_window_handle]
        driver.switch_to.new_window("tab")
        tabs.append(driver.current_window_handle)
        for tab, (image_path, labels, mode) in zip(tabs, jobs):
            driver.switch_to.window(tab)
            open_page(driver, url)
            fill_inputs(driver, image_path, labels, mode)
        for tab in tabs:
            driver.switch_to.window(tab)
            click_run(driver)
        for tab, (image_path, labels, mode) in zip(tabs, jobs):
            driver.switch_to.window(tab)
            assert wait_for_status(driver).startswith("Done")
            np.testing.assert_array_equal(
                label_map_download(driver), expected_label_map(segmenter, image_path, labels, mode)
            )
    finally:
        demo.segment = original
        for handle in driver.window_handles[1:]:
            driver.switch_to.window(handle)
            driver.close()
        driver.switch_to.window(driver.window_handles[0])
    assert most[0] == 1, "the two requests ran at the same time instead of being queued"
