"""The dashboard in a real headless Chromium (Debian's, driven by Selenium through chromedriver),
against a running system: ingest, two workers, Redis, a MongoDB-protocol server.

Started by scripts/dashboard-test.sh, which passes the system through the environment:
EVP_URL, EVP_KEY (a tenant key), EVP_ADMIN_KEY, EVP_WORKERS (the consumer names, comma-separated),
REDIS_PORT, EVP_INGEST_PID and EVP_INGEST_CMD (to restart the ingest), and optionally
EVP_SCREENSHOT (where to save a screenshot of the page).

Every check is on what the browser renders; each failure names what was expected and what was seen.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

URL = os.environ["EVP_URL"]
KEY = os.environ["EVP_KEY"]
ADMIN_KEY = os.environ["EVP_ADMIN_KEY"]
WORKERS = os.environ["EVP_WORKERS"].split(",")
REDIS_PORT = os.environ["REDIS_PORT"]
RUN = f"dash{int(time.time())}"
passed = []


def check(name, condition, seen=""):
    if not condition:
        print(f"dashboard test FAILED: {name}; seen: {seen}", file=sys.stderr)
        raise SystemExit(1)
    passed.append(name)
    print(f"ok - {name}")


def eventually(probe, within=30.0, every=0.25):
    """Polls probe() until it returns something truthy; returns the last value."""
    deadline = time.time() + within
    value = probe()
    while not value and time.time() < deadline:
        time.sleep(every)
        value = probe()
    return value


def http(method, path, key=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, method=method)
    if key:
        request.add_header("x-api-key", key)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def text(driver, css):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else None


def visible(driver, element_id):
    found = driver.find_elements(By.ID, element_id)
    return bool(found) and found[0].is_displayed()


def log_in(driver, key):
    if not visible(driver, "login"):
        driver.find_element(By.ID, "forget").click()
    eventually(lambda: visible(driver, "login"), 10)
    field = driver.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "connect").click()


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1100", "--no-first-run", "--disable-extensions"]:
        options.add_argument(arg)
    # The browser's console, to assert that the page writes no error to it.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def console_errors(driver):
    """The console's errors since the last call (reading the log empties it): failed requests
    (a 404 favicon, a 403 probe) and script errors alike."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def restart_ingest():
    pid = int(os.environ["EVP_INGEST_PID"])
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        try:
            os.kill(pid, 0)
            time.sleep(0.05)
        except OSError:
            break
    return pid


def main():
    driver = browser()
    ingest = None
    try:
        driver.get(URL + "/dashboard")
        check("the page asks for a key", eventually(lambda: visible(driver, "login"), 10))

        log_in(driver, "not-a-key")
        refused = eventually(lambda: "401" in (text(driver, "#login-error") or ""), 10)
        check("a wrong key gets a clear message", refused, text(driver, "#login-error"))

        # The refused key's 401 is the one error the page was meant to meet; seeing it proves the
        # console is read at all.
        errors = console_errors(driver)
        check("the console is read (the refused key's 401 is in it)", any("401" in e for e in errors), errors)

        log_in(driver, KEY)
        check("a tenant key opens the dashboard", eventually(lambda: visible(driver, "board"), 10))
        check("the key is not in the URL", KEY not in driver.current_url, driver.current_url)
        check("no dead-letter panel for a tenant key", not visible(driver, "dlq-card"))

        def consumers():
            return [row.get_attribute("data-name") for row in driver.find_elements(By.CSS_SELECTOR, "#consumers tr")]
        named = eventually(lambda: all(w in consumers() for w in WORKERS), 30)
        check("the consumers table names both workers", named, consumers())

        n = 137
        events = [{"type": f"{RUN}.view", "id": f"{RUN}-{i}", "data": {"i": i}} for i in range(n)]
        status, body = http("POST", "/events/batch", KEY, events)
        check("events accepted", status == 202, (status, body))
        shown = eventually(lambda: text(driver, f'#by-type tr[data-type="{RUN}.view"] td.num') == str(n), 60)
        check(f"the page shows the count of the {n} events stored", shown,
              text(driver, f'#by-type tr[data-type="{RUN}.view"]'))
        check("dependencies are shown up",
              eventually(lambda: (text(driver, '#health tr[data-name="redis"]') or "").find("up") >= 0, 10),
              text(driver, "#health"))
        check("the rollup lag is shown", (text(driver, "#rollup-lag") or "").endswith(" s"), text(driver, "#rollup-lag"))
        errors = console_errors(driver)
        check("no console error with a tenant key (favicon, role, polling)", not errors, errors)

        # The ingest goes away and comes back: the page says so, then carries on by itself.
        command = json.loads(os.environ["EVP_INGEST_CMD"])
        restart_ingest()
        down = eventually(lambda: "unreachable" in (text(driver, "#status") or ""), 15)
        check("an unreachable ingest is shown", down, text(driver, "#status"))
        ingest = subprocess.Popen(command["argv"], env={**os.environ, **command["env"]},
                                  stdout=open(command["log"], "ab"), stderr=subprocess.STDOUT)
        back = eventually(lambda: (text(driver, "#status") or "").startswith("live"), 30)
        check("the page recovers after the ingest restarts", back, text(driver, "#status"))
        console_errors(driver)  # the refused connections while the ingest was away were expected

        # An operator key: the dead letters, and Replay stores one.
        letter_id = subprocess.check_output([
            "redis-cli", "-p", REDIS_PORT, "XADD", "events:dlq", "*",
            "e", json.dumps({"v": 1, "tenant": "load", "id": f"{RUN}-replayed", "type": f"{RUN}.replayed",
                             "ts": int(time.time() * 1000), "rcv": int(time.time() * 1000), "data": {"x": 1}}),
            "dlq_reason", "not stored after 5 deliveries", "dlq_deliveries", "6",
            "dlq_source_id", "1-1", "dlq_consumer", "gone-worker", "dlq_at", "2026-11-23T00:00:00Z",
        ], text=True).strip()
        status, _ = http("GET", f"/events/{RUN}-replayed", KEY)
        check("the dead-lettered event is not stored before the replay", status == 404, status)
        log_in(driver, ADMIN_KEY)
        check("an operator key shows the dead letters", eventually(lambda: visible(driver, "dlq-card"), 10))
        row = f'#dlq tr[data-id="{letter_id}"]'
        listed = eventually(lambda: "not stored after 5 deliveries" in (text(driver, row) or ""), 15)
        check("the dead letter is listed with its reason", listed, text(driver, "#dlq"))
        if os.environ.get("EVP_SCREENSHOT"):
            driver.save_screenshot(os.environ["EVP_SCREENSHOT"])
        driver.find_element(By.CSS_SELECTOR, row + " button.replay").click()
        stored = eventually(lambda: http("GET", f"/events/{RUN}-replayed", KEY)[0] == 200, 60)
        check("Replay gets the dead letter stored in MongoDB", stored)
        gone = eventually(lambda: not driver.find_elements(By.CSS_SELECTOR, row), 10)
        check("the replayed letter leaves the list", gone, text(driver, "#dlq"))
        errors = console_errors(driver)
        check("no console error with an operator key (dead letters, replay)", not errors, errors)
        print(f"dashboard test: {len(passed)} passed, 0 failed")
    finally:
        driver.quit()
        if ingest is not None:
            ingest.terminate()
            try:
                ingest.wait(20)
            except subprocess.TimeoutExpired:
                ingest.kill()


if __name__ == "__main__":
    main()
