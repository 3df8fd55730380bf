"""The open port under attack: a connection flood and anonymous big bodies.

Run: ``.venv/bin/python bench/bench_hardening.py [--nofile 1024] [--idle 1100]``

A real ``main.py serve`` process with the systemd default open-file limit
(1024) for its process tree:

- flood: ``--idle`` connections that never send a byte, opened at once and
  held; meanwhile ``/health/live`` is asked once a second. Reported: how many
  of the server's descriptors are open, how many flood connections it still
  holds at the end, ``/health/live`` answers, log growth, whether it stayed up;
- anonymous bodies: ``--bodies`` POSTs of ``--body-mb`` MB to
  ``/restart/force`` with no token, each pushed in full; reported: the
  server's RSS before, at its peak and after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from tests.fake_llm import FakeLLM
from tests.processes import MAIN, vigil_env


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def flood(port: int, pid: int, idle: int, seconds: float) -> dict[str, float]:
    held: list[socket.socket] = []
    for _ in range(idle):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        held.append(sock)
    answered = asked = 0
    max_fds = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        asked += 1
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).status_code == 200:
                answered += 1
        max_fds = max(max_fds, len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(1.0)
    still_open = 0
    for sock in held:
        try:
            sock.setblocking(False)
            if sock.recv(1) == b"":
                continue  # closed by the server
        except BlockingIOError:
            still_open += 1
        except OSError:
            continue
        finally:
            sock.close()
    return {"asked": asked, "answered": answered, "max_fds": max_fds, "held": still_open}


def bodies(port: int, pid: int, count: int, mb: int) -> tuple[float, float, float]:
    before = peak = rss_mb(pid)
    chunk = b"x" * 1048576
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                f"POST /restart/force HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Length: {mb * len(chunk)}\r\n\r\n".encode()
            )
            with contextlib.suppress(OSError):
                for _ in range(mb):
                    sock.sendall(chunk)
        peak = max(peak, rss_mb(pid))
    return before, peak, rss_mb(pid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument("--idle", type=int, default=1100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--bodies", type=int, default=3)
    parser.add_argument("--body-mb", type=int, default=100)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.idle + 512, args.idle + 512))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))

    with tempfile.TemporaryDirectory() as tmp, FakeLLM() as llm:
        env = vigil_env(Path(tmp), llm.url)
        port = int(env["VIGIL_PORT"])
        proc = subprocess.Popen(
            [sys.executable, str(MAIN), "serve"],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=limit,
        )
        try:
            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1)
                    break
                time.sleep(0.1)
            logs = Path(tmp) / "logs"
            log_before = sum(p.stat().st_size for p in logs.glob("*.log*"))
            flooded = flood(port, proc.pid, args.idle, args.seconds)
            log_growth = sum(p.stat().st_size for p in logs.glob("*.log*")) - log_before
            before, peak, after = bodies(port, proc.pid, args.bodies, args.body_mb)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)
    print("| figure | value |")
    print("| --- | --- |")
    print(f"| open-file limit of the server | {args.nofile} |")
    print(f"| idle connections opened at once | {args.idle} |")
    print(f"| flood connections still held after {args.seconds:g} s | {flooded['held']:.0f} |")
    print(f"| most descriptors open in the server | {flooded['max_fds']:.0f} |")
    print(
        f"| `/health/live` answered during the flood | {flooded['answered']:.0f} of "
        f"{flooded['asked']:.0f} |"
    )
    print(f"| log growth during the flood | {log_growth / 1024:.1f} KB |")
    print(
        f"| RSS before / peak / after {args.bodies} anonymous {args.body_mb} MB bodies | "
        f"{before:.1f} / {peak:.1f} / {after:.1f} MB |"
    )
    print(f"| server still up, never restarted | {'yes' if alive else 'NO'} |")


if __name__ == "__main__":
    main()
