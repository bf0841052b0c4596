"""Screenshot of the demo report for the README (headless Chromium; Debian package `chromium`).

    python scripts/report_screenshot.py demo_out/report.html docs/images/report.png [--height 2400]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("html")
    p.add_argument("png")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2400)
    args = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
                        f"--window-size={args.width},{args.height}",
                        f"--screenshot={Path(args.png).resolve()}", Path(args.html).resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    print(args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
