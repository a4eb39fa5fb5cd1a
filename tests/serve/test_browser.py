"""`namd serve` in a real browser: the server on 127.0.0.1 with a tiny trained run, driven by
headless Chromium (Debian's chromium and chromium-driver, which .ci/run installs; Selenium is
given /usr/bin/chromedriver, so it never fetches a driver).

One walk through the page: pick a test nodule, predict with k = 2 and 2 steps, and check that
the gallery shows 2 images and every number shown equals NAMDPipeline.predict for the same
seed; the zip behind the download link holds the same numbers; an out-of-range field, a file
that is not a scan and a zip with a path outside itself give their one-line errors; a zipped
DICOM folder is read, a click on its slice gives the tumour's centre, a centre outside the
volume is an error, and the server still predicts. Every request the page made went to
127.0.0.1, and the server itself opened no connection elsewhere (an audit hook).

NAMD_SCREENSHOT=docs/serve.png saves the screenshot there (default: the test's tmp folder);
NAMD_SCREENSHOT_RUN=runs/demo_final serves that run instead of the tiny one, and
NAMD_SCREENSHOT_K=8 NAMD_SCREENSHOT_STEPS=10 draw the test nodule's follow-ups with k = 8 and
10 steps instead of 2 and 2 (the picture in docs/viewer.md).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "fixtures" / "lung-pet-ct-dx-A0002" / "dicom"
TUMOUR_VOXEL, TUMOUR_WORLD = (167.0, 291.5), (-65.2138671875, -105.7265625, 200.0)


def _skip_reason() -> str | None:
    """Why the test cannot run here, or None."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return (f"no Chromium here ({', '.join(missing)} missing): apt-get install chromium "
                "chromium-driver (.ci/run does)")
    for module, extra in (("gradio", "serve"), ("selenium", "test")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install -e '.[{extra}]'"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")

# The server, with an audit hook that records every connection or name lookup that is not
# this machine's (gradio's analytics and version check would show here).
SERVER = r"""
import ipaddress, sys
log = open(sys.argv[1], "a", buffering=1)
def local(host):
    host = host.decode() if isinstance(host, bytes) else str(host)
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
def hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple) and not local(args[1][0]):
        log.write(f"connect {args[1][0]}\n")
    elif event == "socket.getaddrinfo" and args[0] and not local(args[0]):
        log.write(f"resolve {args[0]}\n")
sys.addaudithook(hook)
from namd.cli.main import main
sys.exit(main(["serve", "--run", sys.argv[2], "--port", sys.argv[3]]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(request):
    """The run served: the tiny one, or NAMD_SCREENSHOT_RUN's."""
    from namd.run.layout import RunDir

    chosen = os.environ.get("NAMD_SCREENSHOT_RUN")
    return RunDir(Path(chosen).resolve()) if chosen else request.getfixturevalue("tiny_run")


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """`namd serve --run RUN` on a free port of 127.0.0.1; stopped with SIGTERM at the end."""
    tmp = tmp_path_factory.mktemp("serve_browser")
    (tmp / "tmp").mkdir()
    log, audit, port = tmp / "server.log", tmp / "audit.log", _free_port()
    audit.touch()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TMPDIR": str(tmp / "tmp"),
           "PYTHONUNBUFFERED": "1", "NAMD_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("GRADIO_TEMP_DIR", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(audit), str(run_dir.path), str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    ready = f"namd serve: http://127.0.0.1:{port}/ (bound to 127.0.0.1"
    deadline = time.monotonic() + 180
    while ready not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    yield {"url": f"http://127.0.0.1:{port}/", "log": log, "audit": audit, "proc": proc, "tmp": tmp / "tmp"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    assert not list((tmp / "tmp").glob("namd-serve-*"))  # uploads and downloads deleted


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium that cannot resolve any name but 127.0.0.1, with its network log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--disable-sync", "--disable-default-apps", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # a 1280 x 1000 viewport
                           {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


# -- driving gradio's widgets ---------------------------------------------------------------
def _wait(driver, condition, timeout: float = 60, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(), what)


def _find(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def _type(driver, css: str, text: str, then: str = "tab") -> None:
    """Replace an input's text as a user does (select all, type) and leave it (Tab or Enter)."""
    from selenium.webdriver.common.keys import Keys

    box = _find(driver, css)[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(text)
    box.send_keys(Keys.TAB if then == "tab" else Keys.ENTER)


def _message(driver) -> str:
    found = _find(driver, "#namd-message")
    return found[0].text.strip() if found else ""


def _wait_message(driver, start: str, timeout: float = 60) -> str:
    _wait(driver, lambda: _message(driver).startswith(start), timeout,
          f"message starting {start!r}; got {_message(driver)!r}")
    return _message(driver)


def _sentence(driver) -> str:
    return _find(driver, "#namd-sentence textarea")[0].get_attribute("value")


def _wait_sentence(driver, text: str) -> None:
    _wait(driver, lambda: _sentence(driver) == text, 60,
          f"report sentence {text!r}; got {_sentence(driver)!r}, message {_message(driver)!r}")


def _upload(driver, path: Path) -> None:
    """Upload a file, clearing the one before."""
    for clear in _find(driver, "#namd-upload button[aria-label=Clear]"):
        clear.click()
    _wait(driver, lambda: _find(driver, "#namd-upload input[type=file]"))
    _find(driver, "#namd-upload input[type=file]")[0].send_keys(str(path))


def _shown(driver, name: str) -> tuple[str, str]:
    """A number's text and its unrounded value as the page shows them."""
    el = _find(driver, f"[data-namd={name}]")[0]
    return el.text.strip(), el.get_attribute("data-value")


def _predict(driver, k: str, steps: str, seed: str) -> str:
    _type(driver, "#namd-k input", k)
    _type(driver, "#namd-steps input", steps)
    _type(driver, "#namd-seed input", seed)
    _find(driver, "#namd-predict")[0].click()
    return _wait_message(driver, f"{k} virtual follow-ups", 120)


def _check_numbers(driver, expected) -> None:
    """Every number shown equals the prediction's (text: four decimals; value: unrounded)."""
    from namd.serve.readout import fmt_p

    numbers = {"p_baseline": expected.p_baseline, "p_followup_mean": expected.p_followup_mean,
               "p_followup_std": expected.p_followup_std, "brock": expected.brock,
               **{f"p_followup_{i}": p for i, p in enumerate(expected.p_followup)}}
    for name, value in numbers.items():
        text, raw = _shown(driver, name)
        assert text == fmt_p(value), name
        assert float(raw) == pytest.approx(value, abs=1e-9), name


def _nodule(run_dir, pair: str):
    """A test nodule's baseline crop and record, read from the cohort as a script would."""
    from namd.cohort.store import Cohort

    cohort = Cohort(run_dir.stage("cohort"))
    pairs = cohort.pairs("test")
    row = pairs[pairs["pair_id"] == pair].iloc[0]
    return cohort.images([int(row["baseline_index"])])[0], Cohort.ehr(row)


def _requests(driver) -> list[tuple[str, str]]:
    """(URL, URL of the document that asked for it) of every request in Chrome's network log."""
    out = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            out.append((params["request"]["url"], params.get("documentURL", "")))
        elif message["method"] == "Network.webSocketCreated":
            out.append((params["url"], ""))
    return out


def _screenshot(driver, tmp_path: Path) -> Path:
    target = Path(os.environ.get("NAMD_SCREENSHOT") or tmp_path / "serve.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)
    assert driver.save_screenshot(str(target))
    return target


# -- the walk through the page ---------------------------------------------------------------
def _pick_nodule(d) -> str:
    """Choose the first malignant test nodule (else the last); its pair id."""
    _find(d, "#namd-nodule input")[0].click()
    _wait(d, lambda: _find(d, "[role=option]"))
    shown = [o.text.strip() for o in _find(d, "[role=option]")]
    choice = next((t for t in shown if t.endswith("(malignant)")), shown[-1])
    next(o for o in _find(d, "[role=option]") if o.text.strip() == choice).click()
    _wait(d, lambda: "cohort label" in _find(d, "#namd-nodule-info")[0].text)
    return choice.rsplit(" (", 1)[0]


def _check_download(d, pair: str, expected) -> None:
    """The zip behind the download link: the same numbers and samples, no pair id."""
    link = _find(d, "#namd-download a[download]")[0].get_attribute("href")
    assert urlparse(link).hostname == "127.0.0.1" and link.endswith("namd-prediction.zip")
    with zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(link, timeout=30).read())) as archive:
        text = archive.read("prediction.json").decode()
        samples = np.load(io.BytesIO(archive.read("samples.npy")))
    assert pair not in text
    assert json.loads(text)["p_followup"] == pytest.approx(expected.p_followup, abs=1e-9)
    np.testing.assert_allclose(samples, expected.samples, atol=1e-4)


def _check_record_error(d, sentence: str) -> None:
    """An out-of-range age: the CLI's line in the sentence box and the message; then undone."""
    age = _find(d, "#namd-ehr-age input")[0].get_attribute("value")
    _type(d, "#namd-ehr-age input", "150")
    line = "error: record the form: field age = '150' is outside [18, 110]"
    assert _wait_message(d, "error:") == line
    _wait_sentence(d, line)
    _type(d, "#namd-ehr-age input", age)
    _wait_sentence(d, sentence)


def _check_bad_uploads(d, tmp_path: Path) -> None:
    """A file that is not a scan and a zip with a path outside itself: one line each."""
    from namd.serve.upload import ACCEPTED

    (tmp_path / "notes.txt").write_text("not a scan")
    _upload(d, tmp_path / "notes.txt")
    assert _wait_message(d, "error:") == f"error: notes.txt: not a scan; upload {ACCEPTED}"
    with zipfile.ZipFile(tmp_path / "slip.zip", "w") as archive:
        archive.writestr("series/1.dcm", b"x")
        archive.writestr("../evil.dcm", b"y")
    _upload(d, tmp_path / "slip.zip")
    _wait(d, lambda: "slip.zip" in _message(d))
    assert _message(d) == "error: slip.zip: entry '../evil.dcm' points outside the zip: refused"


def _click_tumour(d, tmp_path: Path) -> list[float]:
    """Upload the zipped real series, click the tumour on its slice (the centre the page took),
    then scroll the mouse wheel over the slice: the next slice."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    with zipfile.ZipFile(tmp_path / "ct.zip", "w") as archive:
        for f in sorted(REAL.iterdir()):
            archive.write(f, f"ct/{f.name}")
    _upload(d, tmp_path / "ct.zip")
    assert _wait_message(d, "scan loaded")
    _wait(d, lambda: "512 x 512 x 3 voxels" in _find(d, "#namd-scan-info")[0].text)
    _wait(d, lambda: _find(d, "#namd-slice-index input[type=range]")[0].get_attribute("value") == "1")
    image = _find(d, "#namd-slice img")[0]
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
    box = d.execute_script("return arguments[0].getBoundingClientRect()", image)
    scale = box["width"] / float(image.get_attribute("naturalWidth"))
    ActionChains(d).move_to_element_with_offset(
        image, (TUMOUR_VOXEL[0] + 0.5) * scale - box["width"] / 2,
        (TUMOUR_VOXEL[1] + 0.5) * scale - box["height"] / 2).click().perform()
    assert _wait_message(d, "centre set")
    assert "slice 1 of 0-2" in _find(d, "#namd-centre-info")[0].text
    centre = [float(_find(d, f"#namd-c{a} input")[0].get_attribute("value")) for a in "xyz"]
    shown = image.get_attribute("src")
    ActionChains(d).scroll_from_origin(ScrollOrigin.from_element(image), 0, 120).perform()
    _wait(d, lambda: _find(d, "#namd-slice-index input[type=range]")[0].get_attribute("value") == "2")
    _wait(d, lambda: _find(d, "#namd-slice img")[0].get_attribute("src") != shown, 30, "slice 2 drawn")
    return centre


def _check_no_outside_request(d, server) -> None:
    """Every request of the page went to 127.0.0.1 (data: and blob: URLs stay in the page),
    no request of any kind went to the network elsewhere (the browser's own pages load from
    chrome://, not the network), and the server connected nowhere else."""
    requests = _requests(d)
    ours = [url for url, document in requests if document.startswith(server["url"])]
    assert len(ours) > 20
    assert [u for u in ours if urlparse(u).scheme not in ("data", "blob")
            and urlparse(u).hostname != "127.0.0.1"] == []
    network = [url for url, _ in requests if urlparse(url).scheme in ("http", "https", "ws", "wss")]
    assert [u for u in network if urlparse(u).hostname != "127.0.0.1"] == []
    assert server["audit"].read_text() == ""


def test_the_page_in_a_real_browser(server, browser, run_dir, tmp_path):
    from namd.inference.pipeline import NAMDPipeline
    from namd.inference.scan import crop_nodule

    d = browser
    d.get(server["url"])
    _wait(d, lambda: _find(d, "#namd-nodule input"), 90, "the page")
    body = _find(d, "body")[0].text
    assert "Research use only, not a medical device." in body and "served on 127.0.0.1 only" in body

    # a test nodule, k = 2, 2 steps, seed 5: every number shown is NAMDPipeline.predict's
    k, steps = (int(os.environ.get(f"NAMD_SCREENSHOT_{v}", "2")) for v in ("K", "STEPS"))
    pair = _pick_nodule(d)
    crop, ehr = _nodule(run_dir, pair)
    pipe = NAMDPipeline.from_run(run_dir, device="cpu")
    expected = pipe.predict([crop], [ehr], k=k, num_inference_steps=steps, seed=5, keys=[pair])[0]
    _wait_sentence(d, expected.report_sentence)
    assert _predict(d, str(k), str(steps), "5").startswith(f"{k} virtual follow-ups, {steps} steps, in ")
    _wait(d, lambda: len(_find(d, "#namd-gallery .thumbnail-item img")) == k, 30, f"{k} gallery images")
    _check_numbers(d, expected)
    assert _shown(d, "p_real_followup")[0] != "not available"
    assert _shown(d, "model_sha256")[0] == pipe.model_hash == expected.provenance["model_sha256"]
    assert (_shown(d, "seed")[0], _shown(d, "k")[0]) == ("5", str(k))
    assert _shown(d, "steps")[0].startswith(f"{steps} (ddim") and _shown(d, "seed_from")[0].endswith("(as namd sample)")
    for eid in ("namd-baseline", "namd-real", "namd-mean", "namd-variance", "namd-strip"):
        assert _find(d, f"#{eid} img"), eid
    assert _screenshot(d, tmp_path).stat().st_size > 10_000
    _check_download(d, pair, expected)
    _check_record_error(d, expected.report_sentence)

    # an uploaded scan: bad files, the tumour clicked, a centre outside the volume
    next(label for label in _find(d, "#namd-source label") if "uploaded" in label.text).click()
    _check_bad_uploads(d, tmp_path)
    centre = _click_tumour(d, tmp_path)
    np.testing.assert_allclose(centre, TUMOUR_WORLD, atol=0.7)  # gradio rounds a click to a pixel
    _type(d, "#namd-cz input", "900")
    assert "lies outside the volume along z" in _wait_message(d, "error:")
    _type(d, "#namd-cz input", f"{TUMOUR_WORLD[2]:g}", then="enter")
    assert _wait_message(d, "centre set")

    # the server kept serving: a prediction on the scan, equal to NAMDPipeline.predict
    _predict(d, "2", "2", "23")
    _wait(d, lambda: _shown(d, "seed")[0] == "23", 30)
    assert len(_find(d, "#namd-gallery .thumbnail-item img")) == 2
    scan_crop = crop_nodule(REAL, centre, config=pipe.config)
    _check_numbers(d, pipe.predict([scan_crop], [ehr], k=2, num_inference_steps=2, seed=23)[0])
    assert "Traceback" not in d.page_source
    _check_no_outside_request(d, server)
    assert server["proc"].poll() is None and "Traceback" not in server["log"].read_text()
