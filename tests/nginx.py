"""A real nginx in front of several `course-llm serve` replicas, for tests/test_scale_e2e.py and bench/.

The scale-out contract (DESIGN.md, "Scale-out") is about replicas behind a load balancer; nginx is
the one most deployments put there, so the tests use it rather than a Python stand-in whose
retry and keepalive behaviour would be ours to invent.

`nginx_binary()` finds Debian's nginx, or installs `nginx-light` with apt-get (the install is tried
first, `apt-get update` only when it fails: a fresh package list costs a minute). When that is
impossible the calling test skips with the reason, or fails under CI, as the browser tests do for
Chromium (tests/test_dashboard.py).

`Nginx` writes its own config, prefix, pid file and logs into a directory, and runs in the
foreground (`daemon off`, `master_process on`) as a child process on a free port. The upstream
keeps connections alive (3 s, shorter than `serve`'s 65 s keep-alive, so nginx never reuses one
the replica is closing); responses are not buffered (streams pass through as they come); a request
moves to the next replica only when connecting failed (`proxy_next_upstream error`, and nginx
never resends a POST it already sent), so an answer is never produced twice. The access log names
the replica that served each request (`served_by()`).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from tests.proxy_process import free_port

#: Where Debian's package puts it; COURSE_LLM_NGINX overrides.
DEBIAN_NGINX = "/usr/sbin/nginx"
PACKAGE = "nginx-light"
#: Temp paths nginx creates at start for each module it was built with; Debian's defaults sit in
#: /var/lib/nginx, so every one present must point into the test's own directory.
TEMP_MODULES = ("fastcgi", "uwsgi", "scgi")


def _find_nginx() -> str | None:
    for candidate in (os.environ.get("COURSE_LLM_NGINX"), DEBIAN_NGINX, shutil.which("nginx")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _apt_get(*args: str) -> str:
    """Run apt-get (through `sudo -n` when not root); return why it failed ('' when it did not)."""
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and shutil.which("sudo") is None:
        return "not root and sudo is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", *args]
    try:
        done = subprocess.run(prefix + command, capture_output=True, text=True, timeout=1200, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(command)}: {exc}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return f"{' '.join(command)} exited {done.returncode}: {' | '.join(tail)}"
    return ""


def _install_nginx() -> str:
    """Install Debian's nginx-light; return why it failed ('' when it did not)."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available (not a Debian/Ubuntu machine)"
    if not _apt_get("install", "-y", PACKAGE):
        return ""
    return _apt_get("update") or _apt_get("install", "-y", PACKAGE)


def _unavailable(reason: str) -> NoReturn:
    """Skip on a developer machine; fail under CI, where a silent skip would hide the scale tests.

    tests/test_dashboard.py has the same rule, but its message names the browser tests."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the nginx tests must run)", pytrace=False)
    pytest.skip(reason)


def find_or_install_nginx() -> tuple[str | None, str]:
    """(the nginx binary, '') or, when there is none and it cannot be installed, (None, why)."""
    path = _find_nginx()
    if path is not None:
        return path, ""
    failure = _install_nginx() or "no binary after install"
    path = _find_nginx()
    return (path, "") if path else (None, f"nginx is missing and could not be installed: {failure}")


def nginx_binary() -> str:
    """The nginx binary, installed from Debian's package when missing (skip, or fail under CI)."""
    path, why = find_or_install_nginx()
    if path is None:
        _unavailable(why)
    return path


def _built_without(binary: str) -> set[str]:
    """The temp-path modules this nginx was built without (`nginx -V` lists its configure flags)."""
    done = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=30)
    flags = done.stderr + done.stdout
    return {m for m in TEMP_MODULES if f"--without-http_{m}_module" in flags}


class Nginx:
    """nginx on `port` (a free one by default) balancing over 127.0.0.1 `upstream_ports`."""

    def __init__(
        self,
        binary: str,
        upstream_ports: list[int],
        directory: Path,
        *,
        port: int | None = None,
        worker_processes: int = 1,
    ) -> None:
        self.binary, self.upstream_ports, self.directory = binary, list(upstream_ports), directory
        self.port = port or free_port()
        self.worker_processes = worker_processes
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.directory / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    def config(self) -> str:
        d = self.directory
        temp = [f"    client_body_temp_path {d / 'client_body'};", f"    proxy_temp_path {d / 'proxy'};"]
        temp += [f"    {m}_temp_path {d / m};" for m in TEMP_MODULES if m not in _built_without(self.binary)]
        # As root the workers would switch to `nobody`, who cannot write in a 0700 tmp dir.
        user = ""
        if os.geteuid() == 0:
            user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"
        servers = "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in self.upstream_ports
        )
        return f"""# written by tests/nginx.py
daemon off;
master_process on;
{user}
worker_processes {self.worker_processes};
pid {d / "nginx.pid"};
error_log {self.error_log} warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
{chr(10).join(temp)}
    log_format replicas '$status|$upstream_addr|$upstream_status|$request_time|$request';
    upstream replicas {{
{servers}
        keepalive 64;
        keepalive_timeout 3s;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        client_max_body_size 10m;
        location = /_nginx {{
            access_log off;
            return 200 "nginx\\n";
        }}
        location / {{
            access_log {self.access_log} replicas;
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 120s;
            proxy_next_upstream error;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""

    def log(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def start(self, timeout_s: float = 30) -> Nginx:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config())
        argv = [self.binary, "-p", str(self.directory), "-c", str(self.conf_path), "-e", str(self.error_log)]
        with (self.directory / "stdout.log").open("ab") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/_nginx", timeout=1, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"nginx did not answer within {timeout_s} s:\n{self.log()[-3000:]}")

    def stop(self, timeout_s: float = 15) -> int:
        """SIGTERM (nginx's fast shutdown: the master stops its workers), SIGKILL on a timeout."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # the master and its workers: its own group
            return self.process.wait()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _log_lines(self) -> list[list[str]]:
        if not self.access_log.exists():
            return []
        return [line.split("|") for line in self.access_log.read_text(errors="replace").splitlines()]

    def served_by(self) -> Counter[int]:
        """Requests per replica port that answered them, from the access log. `$upstream_addr`
        lists every replica nginx tried, in order: the last one gave the response."""
        counts: Counter[int] = Counter()
        for fields in self._log_lines():
            if len(fields) >= 2:
                _, _, port = fields[1].split(",")[-1].strip().rpartition(":")
                if port.isdigit():
                    counts[int(port)] += 1
        return counts

    def statuses(self) -> Counter[int]:
        """Responses per HTTP status nginx sent, from the access log."""
        return Counter(int(f[0]) for f in self._log_lines() if f and f[0].isdigit())
