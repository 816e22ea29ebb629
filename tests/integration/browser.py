"""
A real browser for integration tests and the dashboard's screenshot:
headless Chromium from Debian's C{chromium} package, driven by Selenium
through Debian's C{chromedriver}.

Both paths are given to Selenium explicitly, so that Selenium Manager never
runs (it would download drivers and send usage statistics).  Chromium is
started with a fresh profile in the caller's folder and with every
background service turned off, and every host name it might look up
resolves to nothing but 127.0.0.1: it loads the pages it is sent to on
loopback and talks to nobody else.

Every call to the browser is bounded by L{COMMAND_TIMEOUT}.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import urllib.request
import warnings
from typing import Any

CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium (package C{chromium})."""

CHROMEDRIVER = "/usr/bin/chromedriver"
"""Debian's chromedriver (package C{chromium-driver})."""

INSTALL_HINT = "apt-get install chromium chromium-driver"
"""How to get both on Debian or Ubuntu."""

COMMAND_TIMEOUT = 30.0
"""Seconds any one WebDriver command (starting the browser included) may take."""

PAGE_LOAD_TIMEOUT = 15.0
"""Seconds a page may take to load."""

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root in CI, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
    "--metrics-recording-only",
    "--safebrowsing-disable-auto-update",
    "--password-store=basic",
    "--use-mock-keychain",
    "--hide-scrollbars",
    "--no-proxy-server",  # loopback pages, straight (never through an http_proxy of the environment)
    "--force-device-scale-factor=1",
)
"""How Chromium is started: headless, and silent towards the network."""


def missing() -> str | None:
    """
    Why a browser cannot be driven here, or L{None} if it can.

    @return: a message naming what is missing and how to install it.
    """
    lacking = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    hints = []
    if lacking:
        hints.append(f"install them with: {INSTALL_HINT}")
    if importlib.util.find_spec("selenium") is None:
        lacking.append("the Python package selenium")
        hints.append("pip install 'selenium>=4.20' (make test installs it)")
    if not lacking:
        return None
    return f"{' and '.join(lacking)} not found; {'; '.join(hints)}"


HOST_RESOLVER_RULES = "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
"""Belt and braces: no host name resolves, so nothing but 127.0.0.1 can be reached by name."""


def start_chromium(folder: str, width: int = 1400, height: int = 900, names: dict[str, str] | None = None) -> Any:
    """
    Start headless Chromium with a fresh profile in C{folder} (the
    chromedriver log goes there too), with a window of C{width} by
    C{height} CSS pixels.

    @param names: host names (or loopback addresses) to resolve to a
        loopback address besides 127.0.0.1, such as C{{"evil.example":
        "127.0.0.2"}}; every other name resolves to nothing.

    The caller must C{quit()} the driver it gets, in a clean-up.

    @return: a L{selenium.webdriver.Chrome}.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.makedirs(folder, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    mapped = [f"MAP {name} {address}" for name, address in (names or {}).items()]
    options.add_argument("--host-resolver-rules=" + " , ".join(mapped + [HOST_RESOLVER_RULES]))
    options.add_argument(f"--user-data-dir={os.path.join(folder, 'chromium-profile')}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Selenium talks to chromedriver on localhost: never through an http_proxy
    # either.  (Selenium deprecates this for a ClientConfig, which
    # webdriver.Chrome does not take.)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "using ignore_local_proxy_environment_variables", DeprecationWarning)
        options.ignore_local_proxy_environment_variables()
    service = Service(executable_path=CHROMEDRIVER, log_output=os.path.join(folder, "chromedriver.log"))
    # Selenium's HTTP client takes its timeout from the socket default when
    # it is made; without one, a wedged browser would hang the test forever.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(COMMAND_TIMEOUT)
    try:
        driver = webdriver.Chrome(options=options, service=service)
    finally:
        socket.setdefaulttimeout(previous)
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
        driver.set_script_timeout(COMMAND_TIMEOUT)
        # --window-size counts the (invisible) window frame too: grow the
        # window until the page itself gets width x height.
        inner_width, inner_height = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        if (inner_width, inner_height) != (width, height):
            size = driver.get_window_size()
            driver.set_window_size(size["width"] + width - inner_width, size["height"] + height - inner_height)
    except BaseException:
        driver.quit()
        raise
    return driver


def loopback_opener() -> urllib.request.OpenerDirector:
    """A urllib opener that ignores proxy settings, for the nodes' HTTP API on 127.0.0.1."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def severe_console_messages(driver: Any) -> list[str]:
    """The browser console's errors since the last call (JavaScript exceptions, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
