"""Screenshot TensorBoard's scalars page for a run: a headless Chromium over a real `odecli board`.

    python scripts/tensorboard_screenshot.py outputs/fit/<date>/<time> docs/tensorboard.png

Chromium is Debian's `chromium` package; when it is missing the script installs it with apt-get
(as root, or through sudo). The TensorBoard server is started on a free local port and stopped by
its process id whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_or_install_chromium() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    apt = ["apt-get", "install", "-y", "-q", "chromium"]
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    print(f"chromium not found; installing it: {' '.join(prefix + apt)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(prefix + ["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(prefix + apt, check=True, env=env)
    path = shutil.which("chromium")
    if path is None:
        sys.exit("chromium is still not on PATH after installing it; install a Chromium build and retry.")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_scalars(port: int, server: subprocess.Popen, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"TensorBoard exited early:\n{server.stdout.read() if server.stdout else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as response:
                tags = json.loads(response.read())
            if tags:
                return tags
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"TensorBoard showed no scalars within {timeout:.0f}s; is there a tb/ directory under the run?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (or any directory holding TensorBoard events)")
    parser.add_argument("output", type=Path, help="PNG to write")
    parser.add_argument("--size", default="1600,1000", help="window width,height in pixels")
    parser.add_argument("--tags", default="", help="regular expression of the scalar tags to show (default: all, as a user first sees the page)")
    parser.add_argument("--page", default="scalars", choices=("scalars", "timeseries"), help="TensorBoard dashboard to capture")
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time Chromium gives the page to draw its charts")
    args = parser.parse_args()
    if not args.run_dir.is_dir():
        sys.exit(f"{args.run_dir} is not a directory; pass a run directory such as outputs/fit/<date>/<time>.")

    browser = find_or_install_chromium()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "odecli.cli", "board", "--logdir", str(args.run_dir), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        tags = wait_for_scalars(port, server)
        print(f"TensorBoard on port {port}: runs {', '.join(tags)}", flush=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={args.size}",
             f"--virtual-time-budget={args.wait_ms}", f"--screenshot={args.output.resolve()}",
             f"http://127.0.0.1:{port}/?darkMode=false#{args.page}" + (f"&tagFilter={urllib.parse.quote(args.tags)}" if args.tags else "")],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180,
        )  # fmt: skip
        print(f"wrote {args.output}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
