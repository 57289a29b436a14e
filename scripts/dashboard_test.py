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
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
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
    """The text of the first element matching css; None when there is none, or when the page
    replaced it (its tables are re-rendered every 2 s) between finding and reading it."""
    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else None
    except StaleElementReferenceException:
        return None


def click(driver, css):
    """Clicks the first element matching css; False when there is none or the page replaced it."""
    try:
        driver.find_element(By.CSS_SELECTOR, css).click()
        return True
    except (StaleElementReferenceException, NoSuchElementException):
        return False


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
        check("no consumers panel for a tenant key", not visible(driver, "consumers-card"))
        check("no keys panel for a tenant key", not visible(driver, "keys-card"))
        check("no stream length for a tenant key", not (text(driver, "#stream-length") or "").strip(),
              text(driver, "#stream-length"))
        page = driver.page_source
        check("no worker's name anywhere on a tenant's page", not any(w in page for w in WORKERS), WORKERS)

        n = 137
        events = [{"type": f"{RUN}.view", "id": f"{RUN}-{i}", "data": {"i": i}} for i in range(n)]
        status, body = http("POST", "/events/batch", KEY, events)
        check("events accepted", status == 202, (status, body))
        rate = eventually(lambda: (text(driver, "#ingest-rate") or "0").split()[0] not in ("0", "–"), 15)
        check("the tenant's own accepted rate is shown", rate, text(driver, "#ingest-rate"))
        shown = eventually(lambda: text(driver, f'#by-type tr[data-type="{RUN}.view"] td.num') == str(n), 60)
        check(f"the page shows the count of the {n} events stored", shown,
              text(driver, f'#by-type tr[data-type="{RUN}.view"]'))
        check("dependencies are shown up",
              eventually(lambda: (text(driver, '#health tr[data-name="redis"]') or "").find("up") >= 0, 10),
              text(driver, "#health"))
        check("the rollup lag is shown", (text(driver, "#rollup-lag") or "").endswith(" s"), text(driver, "#rollup-lag"))
        check("the tenant's own backlog is shown", (text(driver, "#unstored") or "").isdigit(), text(driver, "#unstored"))

        # A subscription of the tenant: delivered, handed back with an error, shown with it.
        sub = f"{RUN}-projection"
        status, body = http("PUT", f"/subscriptions/{sub}", KEY, {"types": [f"{RUN}.view"]})
        check("a subscription is defined", status == 201, (status, body))
        status, polled = http("POST", f"/subscriptions/{sub}/poll", KEY,
                              {"consumer": "dash-consumer", "max": 10, "wait_ms": 5000})
        delivered = status == 200 and len(polled["events"]) == 10
        check("the subscription delivers stored events", delivered, (status, polled))
        status, _ = http("POST", f"/subscriptions/{sub}/nack", KEY,
                         {"ack": polled["ack"], "error": "projection store down"})
        check("a batch is handed back with an error", status == 204, status)
        sub_row = f'#subscriptions tr[data-name="{sub}"]'
        shown = eventually(lambda: "projection store down" in (text(driver, sub_row) or ""), 15)
        check("the tenant's subscription is shown with its last error", shown, text(driver, "#subscriptions"))
        check("and with its consumer", "dash-consumer" in (text(driver, sub_row) or ""), text(driver, sub_row))
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

        def consumers():
            return [row.get_attribute("data-name") for row in driver.find_elements(By.CSS_SELECTOR, "#consumers tr")]
        named = eventually(lambda: all(w in consumers() for w in WORKERS), 30)
        check("an operator's consumers table names both workers", named, consumers())
        op_row = f'#subscriptions tr[data-name$="/{sub}"]'
        every = eventually(lambda: "projection store down" in (text(driver, op_row) or ""), 15)
        check("an operator sees every tenant's subscriptions, named with their tenant", every,
              text(driver, "#subscriptions"))
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

        # The keys panel: create a key (its secret shown once), use it, revoke it.
        check("an operator key shows the keys panel", eventually(lambda: visible(driver, "keys-card"), 10))
        tenant = f"dash{RUN[-6:]}"
        driver.find_element(By.ID, "key-tenant").send_keys(tenant)
        driver.find_element(By.ID, "key-name").send_keys("dashboard test")
        driver.find_element(By.ID, "key-create").click()
        secret = eventually(lambda: (text(driver, "#new-key") or "").startswith("evp_") and text(driver, "#new-key"), 10)
        check("Create key shows the new secret once", secret, text(driver, "#key-message"))
        key_id = secret.split("_")[1]
        status, _ = http("POST", "/events", secret, {"type": f"{RUN}.bykey"})
        check("the new key is accepted", status == 202, status)
        key_row = f'#keys tr[data-id="{key_id}"]'
        listed = eventually(lambda: "dashboard test" in (text(driver, key_row) or ""), 10)
        check("the new key is listed, with its name", listed, text(driver, "#keys"))
        check("the listing never shows a secret", secret.split("_")[2] not in driver.page_source.replace(secret, ""))
        check("Revoke asks first", eventually(lambda: click(driver, key_row + " button.revoke"), 10))
        driver.switch_to.alert.accept()
        revoked = eventually(lambda: "revoked" in (text(driver, key_row) or ""), 10)
        check("Revoke marks the key revoked", revoked, text(driver, key_row))
        status, _ = http("POST", "/events", secret, {"type": f"{RUN}.bykey"})
        check("the revoked key gets 401", status == 401, status)

        errors = console_errors(driver)
        check("no console error with an operator key (dead letters, replay, keys)", not errors, errors)
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
