"""The `deploy/` folder (issue 15): the compose file, nginx's config and the operator guide agree
with each other and with the code, and nginx really behaves as its comments say.

A deployment breaks quietly when its files drift apart: a replica missing from nginx's upstream
gets no traffic, two replicas on one journal volume replay each other's rows, a misspelt variable
is ignored by pydantic-settings, and a sizing guide whose figures no longer match the compose file
exhausts PostgreSQL's connections. So the first tests read the files (YAML, a small parser for
nginx's syntax) and compare them with the code: Settings' field names, SQLAlchemy's pool, serve's
keep-alive, the registry's key variables.

Then `deploy/nginx.conf` runs in the real nginx (tests/nginx.py finds it, or installs Debian's
package), with the replica host names replaced by 127.0.0.1 ports and its paths moved into a
temporary directory; everything else is the file as shipped. The replicas behind it are small HTTP
servers in this process rather than `course-llm serve`, because what is checked is nginx's side of
misbehaviour a real replica cannot be told to show: a connection dropped after the request arrived
(was the POST sent twice?), a stream held open after its first event (did it reach the client?),
a port where nothing listens (did the request move on?). tests/test_scale_e2e.py runs real replicas.

`docker compose config` validates the compose file where Docker Compose exists; it skips elsewhere
(with the reason), since Docker is not needed for anything else here.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from course_llm.db import create_engine
from course_llm.proxy.serve import KEEP_ALIVE_S
from course_llm.routing.registry import load_registry
from course_llm.settings import Settings, normalize_database_url
from tests.nginx import nginx_binary
from tests.proxy_process import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
NGINX_CONF = DEPLOY / "nginx.conf"
GUIDE = DEPLOY / "README.md"
DOCKERFILE = DEPLOY / "Dockerfile"

#: Connections deploy/README.md keeps free below max_connections (3 reserved for superusers, the
#: rest for migrations, CLI commands, psql): the replicas' pools must fit in what is left.
HEADROOM = 15
#: PostgreSQL's max_connections when the compose file does not set it.
POSTGRES_DEFAULT_MAX_CONNECTIONS = 100
#: The largest body deploy/README.md and nginx.conf promise to pass (nginx's default is 1 MB).
BIG_BODY = 10 * 1024 * 1024


# ---- compose.yaml ------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())  # resolves the anchors and `<<` merge keys
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def replica_services() -> dict[str, dict[str, Any]]:
    """The services that run `course-llm serve`."""
    return {
        name: service
        for name, service in services().items()
        if command_of(service)[:2] == ["course-llm", "serve"]
    }


def option(argv: list[str], name: str, default: str | None = None) -> str:
    if name in argv:
        return argv[argv.index(name) + 1]
    assert default is not None, f"{name} missing from {argv}"
    return default


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def interpolated(value: str) -> str:
    """`value` with every `${VAR…}` replaced by a plain word, as if the operator had set it."""
    return re.sub(r"\$\{([A-Z0-9_]+)[^}]*\}", lambda m: m.group(1).lower(), value)


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → source of each volume in the short syntax (`source:target[:mode]`)."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *_ = str(entry).split(":")
        mounts[target] = source
    return mounts


def test_compose_has_the_services_of_issue_15() -> None:
    names = set(services())
    assert {"postgres", "redis", "nginx"} <= names
    assert len(replica_services()) >= 2, f"fewer than two replicas in {sorted(names)}"


def test_each_replica_journals_into_a_persistent_volume_of_its_own() -> None:
    declared = set(compose().get("volumes") or {})
    journal_volumes: dict[str, str] = {}
    for name, service in replica_services().items():
        spool = Path(environment(service)["COURSE_LLM_SPOOL_PATH"])
        mounts = volume_mounts(service)
        holding = [target for target in mounts if spool.is_relative_to(target)]
        assert holding, f"{name}: the journal {spool} is on no volume (lost with the container)"
        source = mounts[max(holding, key=len)]
        assert source in declared, f"{name}: the journal's volume {source!r} is not a named volume"
        journal_volumes[name] = source
    assert len(set(journal_volumes.values())) == len(journal_volumes), (
        f"replicas share a journal volume: {journal_volumes}"
    )


def test_replicas_have_distinct_names_and_share_database_and_redis() -> None:
    replicas = replica_services()
    names = [environment(s).get("COURSE_LLM_REPLICA") for s in replicas.values()]
    assert None not in names and len(set(names)) == len(names), names
    for key in ("COURSE_LLM_DATABASE_URL", "COURSE_LLM_REDIS_URL", "LITELLM_MASTER_KEY"):
        assert len({environment(s)[key] for s in replicas.values()}) == 1, f"{key} differs between replicas"
    env = environment(next(iter(replicas.values())))
    database = normalize_database_url(interpolated(env["COURSE_LLM_DATABASE_URL"]))
    assert database.startswith("postgresql+asyncpg://"), database
    assert re.match(r"^[^:]+://[^@]*@postgres:5432/", database), f"not the postgres service: {database}"
    assert re.match(r"^redis://redis:6379/\d+$", env["COURSE_LLM_REDIS_URL"])


def known_variables() -> set[str]:
    """Environment variables course_llm or LiteLLM read: Settings' fields (and aliases), the
    COURSE_LLM_* names the code reads directly, and the registry's provider key variables."""
    names = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names.add(alias if isinstance(alias, str) else f"COURSE_LLM_{name.upper()}")
    for path in (ROOT / "course_llm").rglob("*.py"):
        names.update(re.findall(r"[\"'](COURSE_LLM_[A-Z0-9_]+)[\"']", path.read_text()))
    registry = load_registry(ROOT / "config" / "models.yaml")
    names.update(model.key_env for model in registry.models.values())
    return names


def test_replica_variables_are_ones_course_llm_or_litellm_reads() -> None:
    known = known_variables()
    for name, service in replica_services().items():
        unknown = sorted(set(environment(service)) - known)
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"


def test_replicas_pass_every_provider_key_of_the_registry() -> None:
    registry = load_registry(ROOT / "config" / "models.yaml")
    wanted = {model.key_env for model in registry.models.values()}
    for name, service in replica_services().items():
        assert wanted <= set(environment(service)), (
            f"{name} lacks {sorted(wanted - set(environment(service)))}"
        )


def test_replicas_serve_on_all_interfaces_with_a_health_check() -> None:
    for name, service in replica_services().items():
        argv = command_of(service)
        assert option(argv, "--host") == "0.0.0.0", name
        assert int(option(argv, "--workers")) >= 1, name
        health = " ".join(map(str, service["healthcheck"]["test"]))
        assert f":{option(argv, '--port', '4000')}/health/liveliness" in health, health
        # serve drains for up to 30 s, then flushes its rows: Docker must not SIGKILL it before.
        assert int(str(service["stop_grace_period"]).removesuffix("s")) > 30, name


def test_the_image_is_built_from_this_checkout() -> None:
    for name, service in replica_services().items():
        build = service["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, name
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name
    copied = re.findall(r"^COPY\s+(.+?)\s+\S+$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    for sources in copied:
        for source in sources.split():
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which the checkout lacks"
    assert "pip install ." in DOCKERFILE.read_text()


# ---- nginx.conf, read -------------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def find(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        (found,) = self.find(name)
        return found


def parse_nginx(text: str) -> Directive:
    """nginx's syntax, enough for deploy/nginx.conf: directives, blocks, quotes, comments."""
    tokens = re.findall(r'"[^"]*"|\'[^\']*\'|[{};]|[^\s{};]+', re.sub(r"#[^\n]*", "", text))
    root = Directive("main", [], [])
    stack: list[Directive] = [root]
    words: list[str] = []
    for token in tokens:
        if token in (";", "{"):
            directive = Directive(words[0], words[1:], [] if token == "{" else None)
            assert stack[-1].block is not None
            stack[-1].block.append(directive)
            if token == "{":
                stack.append(directive)
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        else:
            words.append(token.strip("\"'"))
    assert len(stack) == 1 and not words, "unbalanced braces"
    return root


def nginx_conf() -> Directive:
    return parse_nginx(NGINX_CONF.read_text())


def proxied_location() -> Directive:
    http = nginx_conf().one("http")
    (location,) = [d for d in http.one("server").find("location") if d.args == ["/"]]
    return location


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return int(number) * units[unit or "s"]


def test_nginx_upstream_lists_exactly_the_replicas_on_their_port() -> None:
    http = nginx_conf().one("http")
    upstream = http.one("upstream")
    servers = {d.args[0] for d in upstream.find("server")}
    expected = {f"{name}:{option(command_of(s), '--port', '4000')}" for name, s in replica_services().items()}
    assert servers == expected
    assert proxied_location().one("proxy_pass").args == [f"http://{upstream.args[0]}"]


def test_nginx_listens_on_the_port_compose_publishes() -> None:
    (published,) = services()["nginx"]["ports"]
    container_port = str(published).rsplit(":", 1)[1]
    listen = nginx_conf().one("http").one("server").one("listen").args[0]
    assert listen.rsplit(":", 1)[-1] == container_port
    mounts = volume_mounts(services()["nginx"])
    assert (DEPLOY / mounts["/etc/nginx/nginx.conf"]).resolve() == NGINX_CONF


def test_nginx_settings_fit_the_proxy() -> None:
    http = nginx_conf().one("http")
    upstream = http.one("upstream")
    location = proxied_location()
    # Keep-alive to the replicas needs HTTP/1.1 and no `Connection: close` passed on.
    assert upstream.find("keepalive")
    assert location.one("proxy_http_version").args == ["1.1"]
    assert ["Connection", ""] in [d.args for d in location.find("proxy_set_header")]
    # nginx must close an idle upstream connection before uvicorn does, or a POST sent on it as
    # uvicorn closes it fails (and is not retried).
    assert seconds(upstream.one("keepalive_timeout").args[0]) < KEEP_ALIVE_S
    # A non-streamed answer sends nothing until the call is done: each of a model's attempts may
    # take the request timeout.
    settings = Settings()
    silent_s = settings.request_timeout_s * settings.max_attempts
    assert seconds(location.one("proxy_read_timeout").args[0]) > silent_s
    assert location.one("proxy_buffering").args == ["off"]
    next_upstream = location.one("proxy_next_upstream").args
    assert "non_idempotent" not in next_upstream
    assert not [c for c in next_upstream if c.startswith("http_")], next_upstream
    body_limit = http.one("server").one("client_max_body_size").args[0]
    assert int(body_limit.removesuffix("m")) * 1024 * 1024 >= BIG_BODY


# ---- the guide's sizing figures ----------------------------------------------------------------------


def test_sizing_figures_match_the_compose_file_and_sqlalchemys_pool() -> None:
    guide = " ".join(GUIDE.read_text().split())
    found = re.search(
        r"(\d+) replicas × (\d+) workers × \((\d+) \+ (\d+)\) = (\d+) connections at most, "
        r"against max_connections = (\d+)",
        guide,
    )
    assert found, "deploy/README.md lost its sizing line"
    replicas, workers, pool_size, overflow, total, max_connections = map(int, found.groups())

    assert replicas == len(replica_services())
    worker_counts = {int(option(command_of(s), "--workers")) for s in replica_services().values()}
    assert worker_counts == {workers}, f"replicas differ in --workers: {worker_counts}"

    env = environment(next(iter(replica_services().values())))
    engine = create_engine(interpolated(env["COURSE_LLM_DATABASE_URL"]))  # connects to nothing yet
    assert (engine.pool.size(), engine.pool._max_overflow) == (pool_size, overflow)  # type: ignore[attr-defined]

    postgres = " ".join(command_of(services()["postgres"]))
    setting = re.search(r"max_connections=(\d+)", postgres)
    assert max_connections == (int(setting.group(1)) if setting else POSTGRES_DEFAULT_MAX_CONNECTIONS)

    assert total == replicas * workers * (pool_size + overflow)
    assert f"{HEADROOM} below `max_connections`" in guide
    assert total <= max_connections - HEADROOM, "the replicas' pools do not fit in PostgreSQL"


def test_guide_names_every_file_and_the_variables_compose_requires() -> None:
    guide = GUIDE.read_text()
    for path in ("compose.yaml", "nginx.conf", "Dockerfile"):
        assert f"`{path}`" in guide
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text()))
    assert required, "compose.yaml requires no variable (the master key must be required)"
    for name in required:
        assert f"`{name}`" in guide, f"deploy/README.md does not explain {name}"


# ---- docker compose config ---------------------------------------------------------------------------


def compose_command() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        done = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            return command
    return None


def test_docker_compose_accepts_the_file() -> None:
    command = compose_command()
    if command is None:
        reason = "docker is installed but has no compose plugin" if shutil.which("docker") else "no docker"
        pytest.skip(f"`docker compose config` cannot run here: {reason} (and no docker-compose)")
    env = {**os.environ, "LITELLM_MASTER_KEY": "sk-test", "POSTGRES_PASSWORD": "test"}
    argv = [*command, "-f", str(COMPOSE), "config", "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    # Without the master key the file must not start at all.
    env.pop("LITELLM_MASTER_KEY")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode != 0 and "LITELLM_MASTER_KEY" in done.stderr, done.stderr


# ---- nginx.conf, run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx() -> str:
    return nginx_binary()


def local_nginx_conf(binary: str, directory: Path, port: int, replicas: dict[str, int]) -> str:
    """deploy/nginx.conf made to run here: the replicas at 127.0.0.1 ports, listening on `port`,
    the user switched to one that exists and every path nginx writes moved into `directory`."""
    text = NGINX_CONF.read_text()

    def replace(pattern: str, replacement: str, count: int = 1) -> None:
        nonlocal text
        text, done = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert done == count, f"{pattern!r} matched {done} times in deploy/nginx.conf, not {count}"

    for name, replica_port in replicas.items():
        replace(rf"^(\s*server\s+){re.escape(name)}:\d+", rf"\g<1>127.0.0.1:{replica_port}")
    replace(r"^(\s*listen\s+)80;", rf"\g<1>127.0.0.1:{port};")
    # As root the workers would switch to `nobody`, who cannot write in a 0700 tmp dir.
    user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};" if os.geteuid() == 0 else ""
    replace(r"^user\s+\S+;", user)
    built = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=30).stderr
    temp = ["client_body", "proxy"] + [
        m for m in ("fastcgi", "uwsgi", "scgi") if f"--without-http_{m}_module" not in built
    ]
    paths = "".join(f"\n    {m}_temp_path {directory / m};" for m in temp)
    replace(r"^http \{", "http {" + paths)
    return text


@dataclass
class Replica:
    """A stand-in for one `course-llm serve`: records what reached it, answers per `mode`."""

    mode: str  # "ok": answer; "drop": read the request, close without answering; "stream": SSE
    received: list[tuple[str, str, str, int]] = field(default_factory=list)
    client_has_first_event: threading.Event = field(default_factory=threading.Event)
    first_event_seen_before_end: bool | None = None
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])


def handler_for(replica: Replica) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            replica.received.append((self.command, self.path, self.headers.get("X-Test-Id", ""), len(body)))
            if replica.mode == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if replica.mode == "stream":
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b'data: {"n": 1}\n\n')
                self.wfile.flush()
                # Hold the stream open until the client has the first event: buffered by nginx,
                # it would reach the client only when the stream ends.
                replica.first_event_seen_before_end = replica.client_has_first_event.wait(20)
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True
                return
            answer = f'{{"replica": {replica.port}, "bytes": {len(body)}}}'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = _handle

    return Handler


@contextmanager
def running(binary: str, tmp: Path, replicas: dict[str, Replica | None]) -> Iterator[str]:
    """deploy/nginx.conf in the real nginx, before `replicas` (None: a port where nothing listens)."""
    servers = []
    ports = {}
    for name, replica in replicas.items():
        if replica is None:
            ports[name] = free_port()
            continue
        replica.server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(replica))
        replica.server.daemon_threads = True
        threading.Thread(target=replica.server.serve_forever, daemon=True).start()
        servers.append(replica.server)
        ports[name] = replica.port
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(local_nginx_conf(binary, tmp, port, ports))
    error_log = tmp / "error.log"
    settings = f"daemon off; pid {tmp / 'nginx.pid'}; error_log {error_log} info;"
    with (tmp / "stdout.log").open("ab") as out:
        process = subprocess.Popen(
            [binary, "-p", str(tmp), "-c", str(conf), "-g", settings],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"nginx exited: {error_log.read_text(errors='replace')[-2000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen within 30 s"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for server in servers:
            server.shutdown()
            server.server_close()


def replica_names() -> list[str]:
    names = sorted(replica_services())
    assert len(names) >= 2
    return names


def post(
    base: str, client: httpx.Client, headers: dict[str, str] | None = None, **kwargs: Any
) -> tuple[str, httpx.Response]:
    """POST to the proxied chat route with a fresh X-Test-Id, which the replicas record."""
    test_id = uuid.uuid4().hex
    headers = {**(headers or {}), "X-Test-Id": test_id}
    return test_id, client.post(f"{base}/v1/chat/completions", headers=headers, **kwargs)


def test_nginx_accepts_the_config(nginx: str, tmp_path: Path) -> None:
    ports = {name: free_port() for name in replica_names()}
    conf = tmp_path / "nginx.conf"
    conf.write_text(local_nginx_conf(nginx, tmp_path, free_port(), ports))
    settings = f"pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'error.log'};"
    done = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-g", settings],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr


@pytest.mark.e2e
def test_requests_reach_every_replica(nginx: str, tmp_path: Path) -> None:
    replicas = {name: Replica("ok") for name in replica_names()}
    with (
        running(nginx, tmp_path, dict(replicas)) as base,
        httpx.Client(trust_env=False, timeout=30) as client,
    ):
        for _ in range(4 * len(replicas)):
            _, response = post(base, client, json={"model": "m"})
            assert response.status_code == 200, response.text
    assert all(r.received for r in replicas.values()), {n: len(r.received) for n, r in replicas.items()}


@pytest.mark.e2e
def test_a_post_that_reached_a_replica_is_never_sent_again(nginx: str, tmp_path: Path) -> None:
    first, *others = replica_names()
    dropping = Replica("drop")
    answering = {name: Replica("ok") for name in others}
    with (
        running(nginx, tmp_path, {first: dropping, **answering}) as base,
        httpx.Client(trust_env=False, timeout=30) as client,
    ):
        statuses = {}
        for _ in range(2 * len(answering) + 2):  # until nginx picks the dropping replica
            test_id, response = post(base, client, json={"model": "m"})
            statuses[test_id] = response.status_code
            if response.status_code != 200:
                break
    (dropped,) = [i for _, _, i, _ in dropping.received]
    assert statuses[dropped] == 502, statuses
    deliveries = [i for r in [dropping, *answering.values()] for _, _, i, _ in r.received]
    assert sorted(deliveries) == sorted(statuses), "a POST reached the replicas more than once"


@pytest.mark.e2e
def test_a_request_moves_on_when_a_replica_refuses_connections(nginx: str, tmp_path: Path) -> None:
    first, *others = replica_names()
    answering = {name: Replica("ok") for name in others}
    replicas: dict[str, Replica | None] = {first: None, **answering}
    with running(nginx, tmp_path, replicas) as base, httpx.Client(trust_env=False, timeout=30) as client:
        sent = [post(base, client, json={"model": "m"}) for _ in range(2 * len(replicas))]
    assert [r.status_code for _, r in sent] == [200] * len(sent)
    deliveries = sorted(i for r in answering.values() for _, _, i, _ in r.received)
    assert deliveries == sorted(i for i, _ in sent)
    assert "Connection refused" in (tmp_path / "error.log").read_text(), "nginx never tried the dead one"


@pytest.mark.e2e
def test_a_stream_reaches_the_client_event_by_event(nginx: str, tmp_path: Path) -> None:
    streaming = {name: Replica("stream") for name in replica_names()}
    events = []
    with (
        running(nginx, tmp_path, dict(streaming)) as base,
        httpx.Client(trust_env=False, timeout=60) as client,
    ):
        body = {"model": "m", "stream": True}
        with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line)
                    for replica in streaming.values():
                        replica.client_has_first_event.set()
    assert events == ['data: {"n": 1}', "data: [DONE]"]
    (served,) = [r for r in streaming.values() if r.received]
    assert served.first_event_seen_before_end, "nginx held the first event until the stream ended"


@pytest.mark.e2e
def test_a_large_prompt_passes(nginx: str, tmp_path: Path) -> None:
    replicas = {name: Replica("ok") for name in replica_names()}
    with (
        running(nginx, tmp_path, dict(replicas)) as base,
        httpx.Client(trust_env=False, timeout=60) as client,
    ):
        _, response = post(base, client, content=b"x" * BIG_BODY, headers={"Content-Type": "text/plain"})
    assert response.status_code == 200, response.status_code
    assert response.json()["bytes"] == BIG_BODY
