"""The HTTP API on uvicorn, batching and overload behaviour, the search page in headless Chromium,
and a loopback load test."""
import contextlib
import json
import os
import shutil
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fastslow_jax.serving import server


@contextlib.contextmanager
def running(engine, wait_ready=True, **settings):
    """``server.make_app(engine, **settings)`` on uvicorn in a thread, on 127.0.0.1 and a free port."""
    app = server.make_app(engine, **settings)
    sock = server.bind("127.0.0.1", 0)
    host, port = sock.getsockname()[:2]
    assert host == "127.0.0.1"
    srv = server.make_server(app, graceful_s=20)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://{host}:{port}"
    deadline = time.perf_counter() + 600
    while not srv.started or (wait_ready and _get(base + "/readyz")[0] != 200):
        assert time.perf_counter() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield base, app, srv
    finally:
        srv.should_exit = True
        thread.join(30)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def live(serving_engine):
    with running(serving_engine, max_wait_ms=2.0) as (base, app, _):
        yield base, app


@pytest.fixture(scope="module")
def base_url(live):
    return live[0]


def _get(url, timeout=30):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()
    except (urllib.error.URLError, ConnectionError):
        return None, None, b""


def _ids(answer):
    return [r["index"] for r in answer["results"]]


def test_search_api(base_url, serving_engine):
    status, headers, body = _get(base_url + "/api/search?q=a+small+red+circle&k=5&rerank=10")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert headers["X-Content-Type-Options"] == "nosniff"
    out = json.loads(body)
    assert out["query"] == "a small red circle" and out["rerank"] == 10 and len(out["results"]) == 5
    assert all(r["slow_score"] is not None for r in out["results"])
    assert set(out["timings_ms"]) == {"queue", "embed", "ann", "slow", "total"} and out["batch"] == 1
    direct = serving_engine.search("a small red circle", 5, 10)
    assert _ids(out) == _ids(direct)
    status, _, body = _get(base_url + "/api/info")
    info = json.loads(body)
    assert status == 200 and info["count"] == 64 and info["can_rerank"] is True and info["ready"] is True
    assert info["batching"] == {"max_batch": 16, "max_wait_ms": 2.0, "queue_size": 64, "timeout_s": 10.0}


@pytest.mark.parametrize("query, status, message", [
    ("q=", 400, "the query is empty"),
    ("q=%20%20", 400, "the query is empty"),
    ("k=3", 400, "the query is empty"),
    ("q=" + "a" * 600, 400, "600 characters"),
    ("q=%ff%fe", 400, "not valid UTF-8"),
    ("q=red&k=ten", 400, "k must be an integer"),
    ("q=red&k=1000", 400, "k must be between 1 and 100"),
    ("q=red&rerank=-1", 400, "rerank must be between"),
    ("q=red&" + "&".join(f"x{i}=1" for i in range(12)), 400, "bad query string"),
    ("q=" + "a" * 9000, 414, "longer than 8192"),
])
def test_bad_queries_get_an_error_status_with_a_message(base_url, query, status, message):
    code, headers, body = _get(base_url + "/api/search?" + query)
    assert code == status and headers["Content-Type"].startswith("application/json")
    assert message in json.loads(body)["error"]


def test_only_gallery_images_are_served(base_url, serving_engine):
    status, headers, body = _get(base_url + "/image/3")
    assert status == 200 and headers["Content-Type"] == "image/png"
    with open(serving_engine.image_path(3), "rb") as f:
        assert body == f.read()
    for path in ("/image/64", "/image/-1", "/image/../manifest.json", "/image/..%2Fmanifest.json",
                 "/image/%2e%2e%2fitems.json", "/manifest.json", "/images/00000003.png", "/../../etc/passwd",
                 "/image/0/../../etc/passwd", "/image/1e3"):
        code, headers, body = _get(base_url + path)
        assert code == 404, path
        assert headers["Content-Type"].startswith("application/json") and json.loads(body)["error"]
        assert b"fingerprint" not in body and b"root:" not in body and b"PNG" not in body
    req = urllib.request.Request(base_url + "/api/search?q=red", method="POST")
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("POST was accepted")
    except urllib.error.HTTPError as err:
        assert err.code == 405 and "use GET" in json.loads(err.read())["error"]


def test_health_readiness_and_the_openapi_description(base_url):
    assert _get(base_url + "/healthz")[0] == 200 and _get(base_url + "/readyz")[0] == 200
    status, headers, body = _get(base_url + "/openapi.json")
    schema = json.loads(body)
    assert status == 200 and schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {"/api/search", "/api/info", "/image/{n}", "/healthz", "/readyz"}
    search = schema["paths"]["/api/search"]["get"]
    assert [p["name"] for p in search["parameters"]] == ["q", "k", "rerank"]
    assert {"200", "400", "503", "504"} <= {str(c) for c in search["responses"]}
    props = schema["components"]["schemas"]["SearchResponse"]["properties"]
    answer = json.loads(_get(base_url + "/api/search?q=red&rerank=5")[2])
    assert set(answer) == set(props)  # the description names exactly the fields an answer has
    assert set(answer["results"][0]) == set(schema["components"]["schemas"]["Result"]["properties"])
    status, _, page = _get(base_url + "/docs")
    assert status == 200 and b"GET /api/search" in page and b"rerank" in page and b"<script" not in page


def test_concurrent_queries_are_batched_and_equal_the_unbatched_answers(live, serving_engine):
    base, app = live
    batcher = app.state.batcher
    queries = ["a small red circle", "two yellow diamonds", "a large blue square above a small green triangle",
               "a purple circle in the bottom left corner to the right of a small green square and a red star"]
    urls = [(q, rr, f"{base}/api/search?q={urllib.request.quote(q)}&k=8&rerank={rr}")
            for q in queries for rr in (0, 10)] * 4
    before = batcher.stats["batches"], batcher.stats["answered"], batcher.stats["submitted"]
    with ThreadPoolExecutor(len(urls)) as pool:
        with serving_engine.lock:  # hold the engine: the requests gather in the queue meanwhile
            futures = [pool.submit(_get, u) for _, _, u in urls]
            deadline = time.perf_counter() + 30
            while batcher.stats["submitted"] - before[2] < len(urls) and time.perf_counter() < deadline:
                time.sleep(0.01)
            assert batcher.queued >= len(urls) - 16  # the worker holds at most one batch, waiting for the engine
    answers = [f.result() for f in futures]
    assert all(a[0] == 200 for a in answers)
    batches, answered = batcher.stats["batches"] - before[0], batcher.stats["answered"] - before[1]
    assert answered == len(urls) and batches <= 3  # the first batch, then the queued in batches of 16
    assert max(json.loads(a[2])["batch"] for a in answers) == 16
    for (q, rr, _), (_, _, body) in zip(urls, answers):
        got, want = json.loads(body), serving_engine.search(q, 8, rr)
        assert _ids(got) == _ids(want)
        np.testing.assert_allclose([r["fast_score"] for r in got["results"]],
                                   [r["fast_score"] for r in want["results"]], rtol=1e-5, atol=1e-5)
        if rr:
            np.testing.assert_allclose([r["slow_score"] for r in got["results"]],
                                       [r["slow_score"] for r in want["results"]], rtol=1e-5, atol=1e-4)


def test_a_full_queue_answers_503_with_retry_after_and_loses_nothing(serving_engine):
    with running(serving_engine, max_batch=2, max_wait_ms=0.0, queue_size=3) as (base, app, _):
        batcher = app.state.batcher
        url = f"{base}/api/search?q=a+small+red+circle&k=5&rerank=10"
        with ThreadPoolExecutor(12) as pool:
            with serving_engine.lock:
                first = pool.submit(_get, url)  # taken by the worker, which then waits for the engine
                while batcher.stats["submitted"] < 1 or batcher.queued:
                    time.sleep(0.01)
                t0 = time.perf_counter()
                rest = [pool.submit(_get, url) for _ in range(11)]
                # 3 queue up; the other 8 are refused at once, while the engine is still held
                deadline = t0 + 30
                while sum(f.done() for f in rest) < 8 and time.perf_counter() < deadline:
                    time.sleep(0.01)
                refused_s = time.perf_counter() - t0
                busy = [f.result() for f in rest if f.done()]
                assert batcher.queued == 3
        answers = [first.result()] + [f.result() for f in rest]
        codes = [a[0] for a in answers]
        assert sorted(codes) == [200] * 4 + [503] * 8, codes
        assert refused_s < 5
        for code, headers, body in answers:
            if code == 503:
                assert int(headers["Retry-After"]) >= 1 and "the server is busy" in json.loads(body)["error"]
            else:
                assert _ids(json.loads(body)) == _ids(serving_engine.search("a small red circle", 5, 10))
        assert [b[0] for b in busy] == [503] * 8
        assert batcher.stats["rejected"] == 8 and batcher.stats["answered"] == 4


def test_timeout_and_disconnect_drop_queued_work(serving_engine):
    with running(serving_engine, max_batch=1, max_wait_ms=0.0, queue_size=8, timeout_s=1.0) as (base, app, _):
        batcher = app.state.batcher
        path = "/api/search?q=a+small+red+circle&k=5&rerank=10"
        with ThreadPoolExecutor(1) as pool, serving_engine.lock:
            running_job = pool.submit(_get, base + path)  # its batch waits for the engine
            while batcher.stats["submitted"] < 1 or batcher.queued:
                time.sleep(0.01)
            t0 = time.perf_counter()
            status, _, body = _get(base + path)  # queued behind it, past its 1 s
            waited = time.perf_counter() - t0
            assert status == 504 and "did not finish within 1 s" in json.loads(body)["error"]
            assert 0.9 < waited < 5 and batcher.queued == 0
            # a client that sends a request and goes away: its queued job leaves the queue
            with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                deadline = time.perf_counter() + 10
                while batcher.queued == 0 and time.perf_counter() < deadline:
                    time.sleep(0.01)
                assert batcher.queued == 1
            deadline = time.perf_counter() + 10
            while batcher.queued and time.perf_counter() < deadline:
                time.sleep(0.01)
            assert batcher.queued == 0 and batcher.stats["cancelled"] == 2
            # the first request timed out as well (the worker held it; its answer will be dropped)
            assert running_job.result(timeout=10)[0] == 504
        deadline = time.perf_counter() + 10
        while batcher.stats["answered"] + batcher.stats["timed_out"] < 1 and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert batcher.stats["answered"] == 1  # only the first was computed; the other two cost nothing


def test_not_ready_until_compiled_then_graceful_shutdown_answers_requests_in_flight(serving_engine):
    with serving_engine.lock:  # the warm-up waits for the engine: the server is up but not ready
        with running(serving_engine, wait_ready=False, max_batch=4) as (base, app, srv):
            time.sleep(0.3)
            status, headers, body = _get(base + "/readyz")
            assert status == 503 and "compiling" in json.loads(body)["error"] and headers["Retry-After"]
            status, headers, body = _get(base + "/api/search?q=red")
            assert status == 503 and "still compiling" in json.loads(body)["error"]
            assert _get(base + "/healthz")[0] == 200
            assert _get(base + "/api/search?q=")[0] == 400  # bad input is refused before anything else
            serving_engine.lock.release()
            try:
                deadline = time.perf_counter() + 300
                while _get(base + "/readyz")[0] != 200:
                    assert time.perf_counter() < deadline
                    time.sleep(0.1)
            finally:
                serving_engine.lock.acquire()
            # requests in flight when the shutdown starts still get their answers
            with ThreadPoolExecutor(3) as pool:
                inflight = [pool.submit(_get, base + f"/api/search?q=a+blue+square&k=3&rerank={r}") for r in (0, 5, 10)]
                while app.state.batcher.stats["submitted"] < 3:
                    time.sleep(0.01)
                srv.should_exit = True
                time.sleep(0.5)
                assert _get(base + "/healthz", timeout=2)[0] is None  # no new connections
                serving_engine.lock.release()
                try:
                    answers = [f.result(timeout=60) for f in inflight]
                finally:
                    serving_engine.lock.acquire()
            assert [a[0] for a in answers] == [200, 200, 200]
            assert [json.loads(a[2])["rerank"] for a in answers] == [0, 5, 10]
    assert app.state.batcher.stopping


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

    def loaded_images(d):
        imgs = d.find_elements(By.CSS_SELECTOR, "#results img.result")
        ok = [i for i in imgs if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)]
        return ok if len(ok) == 12 else False

    def captions(d):
        return [c.text for c in d.find_elements(By.CSS_SELECTOR, "#results figcaption")]

    try:
        driver.set_page_load_timeout(30)
        wait = WebDriverWait(driver, 30)
        # a shared address: the search runs on load, with Fast+Slow on by default (the index can re-rank)
        driver.get(base_url + "/?q=a+small+red+circle+to+the+left+of+a+blue+square&k=12")
        wait.until(lambda d: d.find_element(By.ID, "timings").text.startswith("Fast+Slow (top 10)"))
        imgs = wait.until(loaded_images)
        assert all(i.get_attribute("src").startswith(base_url + "/image/") for i in imgs)
        assert driver.execute_script("return arguments[0].naturalWidth", imgs[0]) == 64
        assert driver.find_element(By.ID, "q").get_attribute("value") == "a small red circle to the left of a blue square"
        assert driver.find_element(By.ID, "slow").is_selected()
        shared = captions(driver)
        assert len(shared) == 12
        assert all(" slow " in c for c in shared[:10]) and not any(" slow " in c for c in shared[10:])
        timings = driver.find_element(By.ID, "timings").text
        for stage in ("text", "ANN", "Slow", "queue", "total", "batch of"):
            assert stage in timings
        # Fast only, from the form: the address follows, and reloading it shows the same results
        driver.find_element(By.ID, "slow").click()
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: d.find_element(By.ID, "timings").text.startswith("Fast: text"))
        wait.until(loaded_images)
        fast = captions(driver)
        assert not any(" slow " in c for c in fast)
        assert "rerank=0" in driver.current_url and "q=a+small+red+circle" in driver.current_url
        driver.refresh()
        wait.until(lambda d: d.find_element(By.ID, "timings").text.startswith("Fast: text"))
        wait.until(loaded_images)
        assert captions(driver) == fast and not driver.find_element(By.ID, "slow").is_selected()
        # back to the shared address: re-ranked again
        driver.back()
        wait.until(lambda d: d.find_element(By.ID, "timings").text.startswith("Fast+Slow (top 10)"))
        wait.until(loaded_images)
        assert captions(driver) == shared
        # a bad query shows the server's message
        box = driver.find_element(By.ID, "q")
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


def test_bench_serve_measures_every_cell_and_checks_every_answer(serving_engine, serving_index, tmp_path, capsys):
    from fastslow_jax.serving import bench
    report = bench.serve(serving_index, clients=(1, 4), reranks=(0, 10), seconds=0.6, max_requests=400,
                         overflow_queue=2, out=str(tmp_path), eng=serving_engine, progress=lambda m: None)
    rows = report["rows"]
    assert [(r["batching"], r["rerank"], r["clients"]) for r in rows[:8]] == [
        (b, rr, c) for rr in (0, 10) for c in (1, 4) for b in (True, False)]
    for r in rows:
        assert r["ok"] > 0 and r["qps"] > 0 and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["mismatches"] == 0 and r["distinct_answers"] >= 1
        assert r["hung"] == 0 and r["connection_errors"] == 0 and r["other_status"] == []
        assert r["requests"] == r["ok"] + r["busy_503"]  # every request got an answer or a 503
    for r in rows[:8]:
        assert r["busy_503"] == 0
        assert (r["mean_batch"] > 1) == (r["batching"] and r["clients"] == 4)
    overflow = rows[8]
    assert overflow["overflow"] and overflow["clients"] == 64 and overflow["queue_size"] == 2
    assert overflow["busy_503"] > 0 and overflow["retry_after"] and overflow["busy_p99_ms"] < 1000
    assert report["compiles_after_warm_up"] == 0 and "speedup_16_clients_rerank_10" not in report
    assert json.load(open(tmp_path / "serve.json"))["rows"] == rows
    out = capsys.readouterr().out
    assert "q/s" in out and "compilations after warm-up: 0" in out


def test_the_load_generator_only_targets_loopback():
    from fastslow_jax.serving import loadgen
    assert loadgen.check_loopback("127.0.0.1") == "127.0.0.1" and loadgen.check_loopback("::1") == "::1"
    for host in ("10.0.0.1", "192.168.1.2", "8.8.8.8", "example.com"):
        with pytest.raises(ValueError, match="only targets loopback"):
            loadgen.check_loopback(host)


def test_cli_serve_and_bench_serve_refuse_bad_arguments_in_one_sentence(serving_index):
    from tests.conftest import run_cli
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    r = run_cli(["bench", "serve", serving_index, "--clients", "1,x"], env)
    assert r.returncode == 1 and "fastslow: error: --clients '1,x' / --rerank '0,10': give comma-separated integers" in r.stderr
    r = run_cli(["bench", "serve", serving_index, "--seconds", "600"], env)
    assert r.returncode == 1 and "--seconds must be in (0, 60]" in r.stderr
    for flag, value, message in (("--max-batch", "0", "the batch size (--max-batch) must be at least 1, got 0"),
                                 ("--queue-size", "0", "the queue size (--queue-size) must be at least 1, got 0"),
                                 ("--timeout", "-1", "the request timeout (--timeout) must be positive, got -1 s"),
                                 ("--max-wait-ms", "-2", "the batch wait (--max-wait-ms) must be at least 0 ms")):
        r = run_cli(["serve", serving_index, flag, value], env)
        assert r.returncode == 1 and f"fastslow: error: {message}" in r.stderr, r.stderr
