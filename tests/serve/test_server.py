"""The server for real: a browser drives the page, and SIGTERM lets requests in flight finish."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn
from conftest import REPO
from served import serve_config, service, workdir  # noqa: F401 (fixtures)

from scenecls.data import synthetic
from scenecls.data.images import encode_jpeg, load_rgb
from scenecls.patches import PatchClassifier
from scenecls.serve import create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"the server exited with {process.returncode}: {process.stderr.read()[-3000:]}"
            )
        try:
            if httpx.get(f"{url}/api/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@pytest.fixture
def live_url(service):  # noqa: F811
    """The app on uvicorn in a thread, on a free localhost port."""
    server = uvicorn.Server(uvicorn.Config(create_app(service), port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    _wait_healthy(url)
    yield url
    server.should_exit = True
    thread.join(30)


def _browser(chromium: str, driver: str, width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=DriverService(executable_path=driver), options=options)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run)")
def test_a_browser_uploads_photos_and_sees_their_classes(live_url, workdir, tmp_path):  # noqa: F811
    """Headless Chromium loads /, uploads two photos and a bad file, waits for the overlays, checks the major
    classes and the error shown; the screenshot is kept as the test's artifact (its path is printed)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photos, expected = [], {}
    for seed in (3, 7):
        path = tmp_path / f"scene_{seed}.jpg"
        path.write_bytes(encode_jpeg(synthetic.make_composite(300, 450, seed=seed)[0]))
        photos.append(str(path))
        patch = serve_config().patch
        expected[path.name] = PatchClassifier.from_workdir(workdir, patch).predict(load_rgb(str(path)))[
            "major"
        ]
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    browser = _browser(CHROMIUM, DRIVER, 1280, 900)
    try:
        browser.get(live_url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "classes" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "files").send_keys("\n".join([*photos, str(bad)]))
        wait.until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, "article[data-state=done] img.overlay")) == 2
        )
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "article[data-state=failed]"))
        for card in browser.find_elements(By.CSS_SELECTOR, "article[data-state=done]"):
            name = card.find_element(By.CSS_SELECTOR, "h2").text.splitlines()[0]
            assert card.find_element(By.CLASS_NAME, "major").text == expected[name]
            image = card.find_element(By.CSS_SELECTOR, "img.overlay")
            assert browser.execute_script("return arguments[0].naturalWidth", image) == 450
        failed = browser.find_element(By.CSS_SELECTOR, "article[data-state=failed]").text
        assert "notes.jpg: not a recognised image format" in failed
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1280, min(height + 200, 4000))  # the window's frame takes some
        screenshot = str(tmp_path / "serve.png")
        assert browser.save_screenshot(screenshot) and os.path.getsize(screenshot) > 20_000
        print(f"screenshot: {screenshot}")
    finally:
        browser.quit()


@pytest.mark.slow
def test_sigterm_finishes_requests_in_flight_then_exits_0(workdir):  # noqa: F811
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "scenecls.main",
        f"--config={os.path.join(REPO, 'configs', 'tiny.py')}",
        f"--workdir={workdir}",
        "--mode=serve",
        f"--config.serve.port={port}",
        "--config.serve.max_patches=20000",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server)
        responses = []
        image = encode_jpeg(synthetic.make_composite(1024, 1024, seed=5)[0])
        slow = threading.Thread(  # 121 x 121 patches: seconds of work
            target=lambda: responses.append(
                httpx.post(f"{url}/api/classify?stride=8", content=image, timeout=300)
            )
        )
        slow.start()
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/api/health").json()["pending_requests"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        slow.join(300)
        assert server.wait(120) == 0
    finally:
        if server.poll() is None:
            server.kill()
    assert responses[0].status_code == 200 and len(responses[0].json()["patches"]) == 121 * 121
    output = server.stdout.read()
    assert "Serving" in output and "Stopped (SIGTERM)" in output, output + server.stderr.read()[-3000:]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/api/health", timeout=5)


def test_the_server_package_imports_no_tensorflow():
    code = "import sys, scenecls.serve; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0
