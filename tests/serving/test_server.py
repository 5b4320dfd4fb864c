"""The HTTP API, the search page in headless Chromium, and a loopback load test."""
import json
import os
import shutil
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from fastslow_jax.serving import server


@pytest.fixture(scope="module")
def base_url(serving_engine):
    serving_engine.warm_up(k=12, rerank=10)
    httpd = server.make_server(serving_engine, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    assert host == "127.0.0.1"
    yield f"http://{host}:{port}"
    httpd.shutdown()
    httpd.server_close()


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read()


def test_search_api(base_url, serving_engine):
    status, ctype, body = _get(base_url + "/api/search?q=a+small+red+circle&k=5&rerank=10")
    assert status == 200 and ctype.startswith("application/json")
    out = json.loads(body)
    assert out["query"] == "a small red circle" and out["rerank"] == 10 and len(out["results"]) == 5
    assert all(r["slow_score"] is not None for r in out["results"])
    assert set(out["timings_ms"]) == {"embed", "ann", "slow", "total"}
    direct = serving_engine.search("a small red circle", 5, 10)
    assert [r["index"] for r in out["results"]] == [r["index"] for r in direct["results"]]
    status, _, body = _get(base_url + "/api/info")
    assert status == 200 and json.loads(body)["count"] == 64 and json.loads(body)["can_rerank"] is True


@pytest.mark.parametrize("query, status, message", [
    ("q=", 400, "the query is empty"),
    ("q=%20%20", 400, "the query is empty"),
    ("k=3", 400, "the query is empty"),
    ("q=" + "a" * 600, 400, "600 characters"),
    ("q=%ff%fe", 400, "not valid UTF-8"),
    ("q=red&k=ten", 400, "k must be an integer"),
    ("q=red&k=1000", 400, "k must be between 1 and 100"),
    ("q=red&rerank=-1", 400, "rerank must be between"),
])
def test_bad_queries_get_a_400_with_a_message(base_url, query, status, message):
    code, ctype, body = _get(base_url + "/api/search?" + query)
    assert code == status and ctype.startswith("application/json")
    assert message in json.loads(body)["error"]


def test_only_gallery_images_are_served(base_url, serving_engine):
    status, ctype, body = _get(base_url + "/image/3")
    assert status == 200 and ctype == "image/png"
    with open(serving_engine.image_path(3), "rb") as f:
        assert body == f.read()
    for path in ("/image/64", "/image/-1", "/image/../manifest.json", "/image/..%2Fmanifest.json",
                 "/image/%2e%2e%2fitems.json", "/manifest.json", "/images/00000003.png", "/../../etc/passwd",
                 "/image/0/../../etc/passwd", "/image/1e3"):
        code, _, body = _get(base_url + path)
        assert code == 404, path
        assert b"fingerprint" not in body and b"root:" not in body and b"PNG" not in body


def _chromium():
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.browser
def test_search_page_in_headless_chromium(base_url, tmp_path):
    chromium, driver_path = _chromium()
    if not (chromium and driver_path):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install -y chromium "
                    "chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        driver.set_page_load_timeout(30)
        driver.get(base_url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "64 images" in d.find_element(By.ID, "info").text)
        box = driver.find_element(By.ID, "q")
        box.send_keys("a small red circle to the left of a blue square", Keys.ENTER)

        def loaded_images(d):
            imgs = d.find_elements(By.CSS_SELECTOR, "#results img.result")
            ok = [i for i in imgs if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)]
            return ok if len(ok) == 12 else False
        imgs = wait.until(loaded_images)
        assert all(d.get_attribute("src").startswith(base_url + "/image/") for d in imgs)
        assert driver.execute_script("return arguments[0].naturalWidth", imgs[0]) == 64
        assert driver.find_element(By.ID, "timings").text.startswith("Fast: text")
        # toggle Fast+Slow: the timings name it and the top 10 (the re-ranked ones) show a Slow score
        driver.find_element(By.ID, "slow").click()
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: d.find_element(By.ID, "timings").text.startswith("Fast+Slow (top 10)"))
        wait.until(loaded_images)
        captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#results figcaption")]
        assert len(captions) == 12
        assert all(" slow " in c for c in captions[:10]) and not any(" slow " in c for c in captions[10:])
        # a bad query shows the server's message
        box.clear()
        box.send_keys(" ", Keys.ENTER)
        wait.until(lambda d: "the query is empty" in d.find_element(By.ID, "timings").text)
        assert driver.find_elements(By.CSS_SELECTOR, "#results img") == []
    finally:
        driver.quit()


@pytest.mark.load
def test_load_16_clients_on_loopback(base_url):
    seconds = float(os.environ.get("FASTSLOW_LOAD_SECONDS", "10"))
    queries = ["a small red circle", "a large blue square above a small green triangle",
               "two yellow diamonds", "a purple circle in the bottom left corner"]
    deadline = time.perf_counter() + seconds
    lat, errors = [], []

    def client(i):
        n = 0
        while time.perf_counter() < deadline:
            q = urllib.request.quote(queries[(i + n) % len(queries)])
            rerank = 10 if (i + n) % 2 else 0
            t0 = time.perf_counter()
            code, _, body = _get(f"{base_url}/api/search?q={q}&k=10&rerank={rerank}")
            lat.append(time.perf_counter() - t0)
            if code != 200 or len(json.loads(body)["results"]) != 10:
                errors.append((code, body[:200]))
            n += 1
        return n

    with ThreadPoolExecutor(16) as pool:
        counts = list(pool.map(client, range(16)))
    lat_ms = sorted(1e3 * x for x in lat)
    p50 = statistics.median(lat_ms)
    p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))]
    print(f"\nload test: 16 clients, {seconds:.0f} s, {len(lat_ms)} requests ({len(lat_ms) / seconds:.1f}/s), "
          f"{len(errors)} errors, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    assert errors == []
    assert all(c > 0 for c in counts)
