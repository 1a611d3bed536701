"""Screenshot the ops console over a store, as docs/console-overview.png was made.

    .venv/bin/python docs/console_screenshot.py var/demo docs/console-overview.png [--window 1h]

The store (HOME/tuneloop.db, e.g. after `tuneloop demo --feedback thumbs-only`) is copied first, so the run
leaves it untouched; a gateway serves the copy with a fresh admin key, and Debian's chromium signs in and takes
the overview page.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from core.api_keys import Scope, create_key
from core.db import make_engine, migrate
from core.settings import Settings
from tests.servers import serve
from tuneloop.compose import gateway_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--window", default="1h")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        shutil.copy(args.home / "tuneloop.db", home / "tuneloop.db")
        url = f"sqlite:///{home / 'tuneloop.db'}"
        migrate(url)  # the copy, to this code's schema (as `tuneloop serve` would)
        _public, key = create_key(make_engine(url), Scope.admin, "screenshot")
        with serve(gateway_app(Settings(home=home, database_url=url))) as base, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/console/signin")
            page.fill("#key", key)
            page.click("#signin")
            page.goto(f"{base}/console?window={args.window}")
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
