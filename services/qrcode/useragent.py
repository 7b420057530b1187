"""A short, human summary of a User-Agent ("Chrome 126", "macOS") for the phone's confirm screen."""

from __future__ import annotations

import re

# Order matters: many browsers also claim to be Safari or Chrome.
_BROWSERS: list[tuple[str, str]] = [
    ("MicroMessenger", r"MicroMessenger/([\d.]+)"),
    ("Edge", r"Edg(?:e|A|iOS)?/([\d.]+)"),
    ("Opera", r"(?:OPR|Opera)/([\d.]+)"),
    ("QQ Browser", r"QQBrowser/([\d.]+)"),
    ("UC Browser", r"UCBrowser/([\d.]+)"),
    ("Firefox", r"(?:Firefox|FxiOS)/([\d.]+)"),
    ("Chrome", r"(?:Chrome|CriOS)/([\d.]+)"),
    ("Safari", r"Version/([\d.]+).*Safari/"),
]

_SYSTEMS: list[tuple[str, str]] = [
    ("Windows", r"Windows NT"),
    ("HarmonyOS", r"HarmonyOS|OpenHarmony"),
    ("iOS", r"iPhone|iPad|iPod"),
    ("Android", r"Android"),
    ("macOS", r"Mac OS X|Macintosh"),
    ("ChromeOS", r"CrOS"),
    ("Linux", r"Linux|X11"),
]


def summarize(user_agent: str) -> tuple[str, str]:
    """``(browser, os)``, each ``"unknown"`` when not recognised."""
    ua = user_agent or ""
    browser = "unknown"
    for name, pattern in _BROWSERS:
        match = re.search(pattern, ua)
        if match:
            major = match.group(1).split(".")[0]
            browser = f"{name} {major}"
            break
    system = next((name for name, pattern in _SYSTEMS if re.search(pattern, ua)), "unknown")
    if "HeadlessChrome" in ua:
        browser = browser.replace("Chrome", "Headless Chrome")
    return browser, system
