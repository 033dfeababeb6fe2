"""A Ray head of the test's own: token authentication on, its own folder and ports, stopped by pid.

Why each choice:
* Ray 2.60 turns token authentication on by default for local clusters and keeps the token in
  ``~/.ray/auth_token``. A test that relies on that file depends on whatever an earlier run (or the
  user) left there. This head gets ``RAY_AUTH_MODE=token`` and a fresh token file named by
  ``RAY_AUTH_TOKEN_PATH``, which takes precedence over ``~/.ray``; every client the test runs gets the
  same two variables, as docs/cluster.md tells users to do.
* Ray's CLI stop command stops every Ray process of the machine, a user's own cluster included. The head runs as
  ``ray start --block`` in a process session of its own; SIGTERM to that process shuts down exactly the
  processes it started, and anything left in its session is killed by session id.
* Every port is chosen free on 127.0.0.1 (Ray's defaults, such as the dashboard agent's 52365, would
  collide with another cluster on the machine), and the temporary folder is short (Unix socket paths
  are limited to about 100 bytes).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tests.jobs.util import free_port

RAY_BIN = Path(sys.executable).with_name("ray")
PORT_FLAGS = (
    "--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
    "--node-manager-port", "--object-manager-port",
)


@dataclass
class RayHead:
    """A running head: where to reach it and the environment a client needs to be let in."""

    folder: Path
    ports: dict[str, int]
    env: dict[str, str]
    process: subprocess.Popen
    log: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports['--port']}"

    def ray(self, *args: str, timeout: float = 120, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
        """Run the `ray` CLI against this head with its credentials (or with ``env`` instead)."""
        return subprocess.run(
            [str(RAY_BIN), *args], capture_output=True, text=True, timeout=timeout, env=env or self.env
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def session_pids(self) -> list[int]:
        """Every live process in the head's own session (the head and all it started)."""
        sid = self.process.pid
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the command name (which may hold spaces) start after the last ')'.
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
                pids.append(int(entry.name))
        return pids

    def stop(self, timeout: float = 60) -> None:
        """Stop what this head started, and nothing else."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while self.session_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in self.session_pids():  # stragglers of our own session only
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def client_env(token_path: Path) -> dict[str, str]:
    """The environment of a process that talks to a token-authenticated head (CLI, driver, job)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), RAY_USAGE_STATS_ENABLED="0")
    return env


def start_head(num_cpus: int = 2, ready_timeout: float = 180) -> RayHead:
    """Start a head and wait until its job agent accepts submissions (bounded)."""
    folder = Path(tempfile.mkdtemp(prefix="mt-ray-", dir="/tmp"))
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = client_env(token)
    ports = {flag: free_port() for flag in PORT_FLAGS}
    args = [
        str(RAY_BIN), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--disable-usage-stats",
        "--num-cpus", str(num_cpus), "--temp-dir", str(folder / "ray"),
        "--min-worker-port", "0", "--max-worker-port", "0",
    ]
    for flag, port in ports.items():
        args += [flag, str(port)]
    log = folder / "head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    head = RayHead(folder, ports, env, proc, log)
    try:
        wait_for_job_agent(head, ready_timeout)
    except BaseException:
        head.stop()
        raise
    return head


def wait_for_job_agent(head: RayHead, timeout: float) -> None:
    """Block until the head accepts a job; a head that never gets there fails with its log.

    `ray start` returns before the head's job agent has registered, and a submission in that window
    fails with "No available agent to submit job". A trivial job that runs to the end proves the whole
    path (dashboard, agent, token) is up."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not head.alive():
            raise RuntimeError(f"ray head exited with {head.process.returncode}:\n{_tail(head.log)}")
        res = head.ray("job", "submit", "--address", head.dashboard_url, "--", "true", timeout=60)
        if res.returncode == 0 and re.search(r"Job '\S+' succeeded", res.stdout + res.stderr):
            return
        last = (res.stdout + res.stderr)[-800:]
        time.sleep(2)
    raise TimeoutError(
        f"the Ray head's job agent was not ready within {timeout:.0f} s; last answer:\n{last}\n"
        f"head log:\n{_tail(head.log)}"
    )


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
