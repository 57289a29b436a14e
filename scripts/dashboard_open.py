"""Opens the dashboard in headless Chromium (Debian's, through Selenium) with a key, and keeps it
open: for --seconds (the benchmark's "with a dashboard open" rounds), or until --screenshot has been
taken after --after seconds of polling (scripts/screenshot.sh).

    dashboard_open.py URL KEY [--seconds N] [--screenshot PATH --after S]
"""

import argparse
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--screenshot")
    parser.add_argument("--after", type=float, default=30)
    args = parser.parse_args()

    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1250", "--no-first-run", "--disable-extensions"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options,
                              service=Service(os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")))
    try:
        driver.get(args.url.rstrip("/") + "/dashboard")
        driver.find_element(By.ID, "key").send_keys(args.key)
        driver.find_element(By.ID, "connect").click()
        deadline = time.time() + 15
        while not driver.find_element(By.ID, "board").is_displayed():
            if time.time() > deadline:
                print("the dashboard did not open", file=sys.stderr)
                sys.exit(1)
            time.sleep(0.2)
        print("dashboard open", flush=True)
        if args.screenshot:
            time.sleep(args.after)
            driver.save_screenshot(args.screenshot)
            print(f"screenshot saved to {args.screenshot}")
        else:
            time.sleep(args.seconds)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
