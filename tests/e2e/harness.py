"""Start the flaky MCP server and the real ContextForge gateway, and talk to them.

Shared by the pytest suite (conftest.py) and the demo (demo.py). Runs in the e2e venv (the
gateway, this project's wheel and the native plugin installed side by side). Everything binds
to 127.0.0.1 on ports picked at run time; every process is started in its own process group,
its PID recorded, and stopped with SIGTERM then SIGKILL; every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
PY = sys.executable
JWT_SECRET = "e2e-jwt-secret-0123456789abcdef0123456789abcdef"
ENC_SECRET = "e2e-auth-encryption-secret-0123456789abcdef"
ADMIN = "admin@example.com"
# The gateway's secrets, for the server and for its token tool. Gateway 1.1 refuses to start when a
# password is shorter than 12 characters or a known default ("changeme"); 1.0.7 accepts these too.
SECRETS = {
    "JWT_SECRET_KEY": JWT_SECRET,
    "AUTH_ENCRYPTION_SECRET": ENC_SECRET,
    "PLATFORM_ADMIN_PASSWORD": "e2e-admin-password-7f3a91",
    "DEFAULT_USER_PASSWORD": "e2e-user-password-c28e54",
}
# Per-call observations the tests collect; conftest prints them as a table at the end.
RESULTS: list[dict[str, Any]] = []

_RETRY_RE = re.compile(r"retry requested .* delay_ms=(\d+)")
SERVER_NAME = "flaky"  # tools become "flaky-<tool>" (slug of the server name, "_" -> "-")
#: The gateway rebuilds a plugin manager on its first use after 30 s (issue 16): with delays of
#: 11 s then 22 s, one call's three attempts span 33 s, so a rebuild always lands between two of
#: its decisions.
REBUILD_BASE_MS = 11_000
REBUILD_OVERRIDES = {
    f"{SERVER_NAME}-fail-across-rebuild": {"backoff_base_ms": REBUILD_BASE_MS, "max_backoff_ms": 30_000}
}
#: Hooks of a stanza that retries non-idempotent tools selectively: the gateway hands the tool's
#: record (its annotations) only to plugins with tool_pre_invoke.
IDEMPOTENCY_HOOKS = ["tool_pre_invoke", "tool_post_invoke"]
#: An unannotated tool the non_idempotent_retries stanzas declare idempotent (the native plugin
#: ignores the key).
IDEMPOTENT_OVERRIDES = {f"{SERVER_NAME}-slow-overridden": {"idempotent": True}}

# Plugin stanzas: the wasm plugin under a name that avoids the gateway's native fast path
# (see README "Which name"); the native plugin under a non-default name too, so that both run
# through the same Python hook path of the gateway and are compared like for like.
PLUGINS = {
    "wasm": ("RetryWithBackoffWasmPlugin", "cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin"),
    "native": ("RetryWithBackoffNativePlugin", "cpex_retry_with_backoff.RetryWithBackoffPlugin"),
}


def versions() -> dict[str, str]:
    """What this environment runs: Python, the gateway, cpex, the mcp SDK and both plugins."""
    dists = {
        "gateway": "mcp-contextforge-gateway",
        "cpex": "cpex",
        "mcp": "mcp",
        "native": "cpex-retry-with-backoff",
        "wasm": "cpex-retry-with-backoff-wasm",
    }
    out = {"python": platform.python_version()}
    for key, dist in dists.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


def gateway_release() -> tuple[int, int]:
    """(major, minor) of the installed gateway, for the few answers that differ between releases."""
    major, minor = importlib.metadata.version("mcp-contextforge-gateway").split(".")[:2]
    return int(major), int(minor)


def describe(v: dict[str, str]) -> str:
    return (
        f"mcp-contextforge-gateway {v['gateway']} on Python {v['python']} (cpex {v['cpex']}, mcp {v['mcp']});"
        f" native cpex-retry-with-backoff {v['native']}, cpex-retry-with-backoff-wasm {v['wasm']}"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """A child process started in its own session; stop() terminates it by PID, then kills."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            # Own session: the group id is our PID; workers the server forks go with it.
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        # Leftovers of the group (if any) after the leader exited.
        _signal_group(self.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it if this Python process dies, even by SIGKILL,
    so that no gateway or server outlives the test run that started it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so finalizers (and finally blocks) stop the children."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def start(name: str, argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> Proc:
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
    try:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks or imports
        )
    finally:
        log.close()
    return Proc(name, popen, log_path)


def wait_until(what: str, check: Any, timeout: float, proc: Proc | None = None) -> Any:
    """Poll check() until it returns something truthy; fail after timeout or if proc died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.log_tail()}"
            )
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError) as e:
            last = e
        time.sleep(0.2)
    tail = f"\n{proc.name} log:\n{proc.log_tail()}" if proc is not None else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last!r}){tail}")


# --------------------------------------------------------------------------- flaky server


@dataclass
class FlakyServer:
    proc: Proc
    port: int
    attempt_log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def attempts(self, key: str) -> list[dict[str, Any]]:
        """The upstream calls of key, in order: {"t", "tool", "key", "attempt", "answer"}."""
        if not self.attempt_log.exists():
            return []
        rows = [json.loads(line) for line in self.attempt_log.read_text().splitlines() if line]
        return [r for r in rows if r["key"] == key]


def start_flaky_server(workdir: Path) -> FlakyServer:
    port = free_port()
    attempt_log = workdir / "attempts.jsonl"
    proc = start(
        "flaky-server",
        [PY, str(HERE / "flaky_server.py"), str(port), str(attempt_log)],
        cwd=workdir,
        env={**_base_env(), "PYTHONUNBUFFERED": "1"},
        log_path=workdir / "flaky-server.log",
    )
    server = FlakyServer(proc, port, attempt_log)
    try:
        wait_until("the flaky MCP server to listen", lambda: _port_open(port), 30, proc)
    except BaseException:
        proc.stop()
        raise
    return server


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _base_env() -> dict[str, str]:
    """A minimal environment: nothing from the caller's gateway/plugin settings leaks in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    return {k: os.environ[k] for k in keep if k in os.environ}


# --------------------------------------------------------------------------- gateway


@dataclass
class PluginSetup:
    variant: str = "wasm"  # "wasm" | "native"
    max_retries: int = 2
    backoff_base_ms: int = 100
    max_backoff_ms: int = 5000
    retry_on_status: list[int] = field(default_factory=lambda: [429, 500, 502, 503, 504])
    jitter: bool = False
    tool_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=lambda: ["tool_post_invoke"])
    #: Written to the stanza only when set ("all", "throttled", "none").
    non_idempotent_retries: str | None = None
    #: The stanza's cpex mode: "disabled" loads nothing until a tool plugin binding (gateway
    #: 1.0.7 and 1.1.0) switches it on for a team's tool.
    mode: str = "sequential"

    @property
    def name(self) -> str:
        return PLUGINS[self.variant][0]

    def ready_line(self) -> str:
        """What cpex logs once it has handled this stanza at start-up."""
        if self.mode == "disabled":
            return f"Plugin: {self.name} is disabled"
        return f"Registered plugin: {self.name}"

    def stanza(self) -> dict[str, Any]:
        name, kind = PLUGINS[self.variant]
        config: dict[str, Any] = {
            "max_retries": self.max_retries,
            "backoff_base_ms": self.backoff_base_ms,
            "max_backoff_ms": self.max_backoff_ms,
            "retry_on_status": self.retry_on_status,
            "jitter": self.jitter,
            "check_text_content": False,
            "tool_overrides": self.tool_overrides,
        }
        if self.non_idempotent_retries is not None:
            config["non_idempotent_retries"] = self.non_idempotent_retries
        return {
            "name": name,
            "kind": kind,
            "hooks": self.hooks,
            "mode": self.mode,
            "priority": PRIORITY,
            "config": config,
        }

    def yaml(self) -> str:
        return plugins_yaml([self])


#: The stanzas' priority (the gateway's plugins/config.yaml gives the native plugin 170).
PRIORITY = 170


def plugins_yaml(setups: list[PluginSetup]) -> str:
    """The gateway's plugin configuration file with one stanza per setup."""
    doc = {
        "plugins": [setup.stanza() for setup in setups],
        "plugin_dirs": [],
        "plugin_settings": {
            "parallel_execution_within_band": False,
            "plugin_timeout": 30,
            "fail_on_plugin_error": False,
            "plugin_health_check_interval": 3600,
        },
    }
    # JSON is valid YAML: no YAML library needed here.
    return json.dumps(doc, indent=2) + "\n"


@dataclass
class Gateway:
    proc: Proc
    port: int
    workdir: Path
    plugin: PluginSetup
    max_tool_retries: int
    client: httpx.Client
    #: Further stanzas in the same configuration file (after plugin's).
    extra_plugins: tuple[PluginSetup, ...] = ()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300) -> None:
        """Healthy, every stanza handled by cpex (a plugin registered, a disabled one skipped), and
        an admin token in the client."""
        deadline = time.monotonic() + timeout
        wait_until(
            f"{self.proc.name}'s /health",
            lambda: httpx.get(f"{self.base}/health", timeout=2).status_code == 200,
            timeout,
            self.proc,
        )
        for setup in (self.plugin, *self.extra_plugins):
            line = setup.ready_line()
            wait_until(
                f"{self.proc.name} to log {line!r}",
                lambda line=line: line in self.proc.log_path.read_text(errors="replace"),
                max(1.0, deadline - time.monotonic()),
                self.proc,
            )
        self.client.headers["Authorization"] = f"Bearer {mint_token()}"

    def stop(self) -> None:
        self.client.close()
        self.proc.stop()

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        """POST a JSON body to the REST API; the JSON answer, or RuntimeError on an HTTP error."""
        r = self.client.post(path, json=body, headers=headers, timeout=60)
        if r.status_code >= 300:
            raise RuntimeError(f"POST {path} -> {r.status_code}: {r.text}\n{self.proc.log_tail()}")
        return dict(r.json())

    def register(
        self, server: FlakyServer, name: str = SERVER_NAME, team_id: str | None = None
    ) -> dict[str, Any]:
        """Register the flaky server (POST /gateways); with team_id, under that team (visibility
        "team"): its tools are then team-scoped, and the gateway runs their plugins in the
        context "<team_id>::<tool name>" that tool plugin bindings apply to."""
        body: dict[str, Any] = {"name": name, "url": server.url, "transport": "STREAMABLEHTTP"}
        if team_id is not None:
            body |= {"team_id": team_id, "visibility": "team"}
        return self.post("/gateways", body)

    def create_team(self, name: str) -> str:
        """POST /teams/ (a private team; the admin is its owner); returns the team id."""
        body = {"name": name, "description": "retry e2e", "visibility": "private"}
        return str(self.post("/teams/", body)["id"])

    def tools_of(self, gateway_id: str) -> dict[str, str]:
        """{tool name: tool id} of the tools the gateway synced from one registered server."""
        r = self.client.get("/tools", timeout=30)
        r.raise_for_status()
        data = r.json()
        items = data["items"] if isinstance(data, dict) and "items" in data else data
        return {t["name"]: t["id"] for t in items if t.get("gatewayId") == gateway_id}

    def create_server(self, name: str, tool_ids: list[str], team_id: str | None = None) -> str:
        """POST /servers: a virtual server over tool_ids (under team_id when given); returns its id."""
        body: dict[str, Any] = {"server": {"name": name, "associated_tools": tool_ids}}
        if team_id is not None:
            body |= {"team_id": team_id, "visibility": "team"}
        return str(self.post("/servers", body)["id"])

    def log_records(self, request_id: str) -> list[dict[str, Any]]:
        """The gateway's JSON log records tagged with request_id (a call's X-Correlation-ID)."""
        records = []
        for line in self.proc.log_path.read_text(errors="replace").splitlines():
            if request_id not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("request_id") == request_id:
                records.append(rec)
        return records

    def tool_names(self) -> list[str]:
        r = self.client.get("/tools", timeout=30)
        r.raise_for_status()
        data = r.json()
        items = data["items"] if isinstance(data, dict) and "items" in data else data
        return sorted(t["name"] for t in items)

    def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        correlation_id: str,
        timeout: float = 60,
        server_id: str | None = None,
    ) -> tuple[dict[str, Any], float]:
        """tools/call through POST /rpc; returns (JSON-RPC response, client-side seconds).

        correlation_id becomes the request id the plugin keys its retry state on, and tags the
        gateway's log lines of this call (see retry_delays). server_id scopes the call to a
        virtual server's tools (how to name one of several teams' tools of the same name).
        """
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if server_id is not None:
            params["server_id"] = server_id
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        headers = {"X-Correlation-ID": correlation_id}
        t0 = time.monotonic()
        r = self.client.post("/rpc", json=body, headers=headers, timeout=timeout)
        elapsed = time.monotonic() - t0
        r.raise_for_status()
        return dict(r.json()), elapsed

    def retry_delays(self, correlation_id: str) -> list[int]:
        """delay_ms of each "retry requested" the gateway logged (at DEBUG) for that request."""
        delays = []
        for rec in self.log_records(correlation_id):
            m = _RETRY_RE.search(str(rec.get("message", "")))
            if m:
                delays.append(int(m.group(1)))
        return delays


def record_call(
    gw: Gateway,
    server: FlakyServer,
    scenario: str,
    tool: str,
    *,
    timeout: float = 60,
    server_id: str | None = None,
    variant: str | None = None,
    **args: Any,
) -> dict[str, Any]:
    """Call tool (its name on the flaky server) under a fresh key and record what happened in
    RESULTS: the upstream answers, the delays the gateway logged as asked for, the gaps between
    attempts at the server and the client's wall time. Returns that record plus "resp".

    server_id: through that virtual server (Gateway.call); variant: the plugin that decides
    (default the gateway's first stanza), for the key and the summary table."""
    variant = variant or gw.plugin.variant
    key = f"{variant}-{tool}-{uuid.uuid4().hex[:12]}"
    resp, elapsed = gw.call(
        f"{SERVER_NAME}-{tool.replace('_', '-')}",
        {**args, "key": key},
        correlation_id=key,
        timeout=timeout,
        server_id=server_id,
    )
    rows = server.attempts(key)
    gaps = [round((b["t"] - a["t"]) * 1000) for a, b in itertools.pairwise(rows)]
    out = {
        "variant": variant,
        "scenario": scenario,
        "resp": resp,
        "elapsed_ms": round(elapsed * 1000),
        "answers": [r["answer"] for r in rows],
        "attempts": len(rows),
        "delays_ms": gw.retry_delays(key),
        "gaps_ms": gaps,
    }
    RESULTS.append({k: v for k, v in out.items() if k != "resp"})
    return out


def result_of(out: dict[str, Any]) -> dict[str, Any]:
    """The MCP result of a record_call (fails when the gateway answered a JSON-RPC error)."""
    assert "result" in out["resp"], out["resp"]
    return dict(out["resp"]["result"])


def _settings_env(workdir: Path) -> dict[str, str]:
    """What the gateway and its migration runner share: the database, secrets and admin account.

    TMPDIR is the working directory because the migration lock file lives there: gateways of other
    runs on this machine must not wait for it."""
    return {
        **_base_env(),
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": str(workdir),
        "DATABASE_URL": f"sqlite:///{workdir / 'mcp.db'}",
        "CACHE_TYPE": "memory",
        **SECRETS,
        "PLATFORM_ADMIN_EMAIL": ADMIN,
        "MCPGATEWAY_UI_ENABLED": "false",
        "MCPGATEWAY_ADMIN_API_ENABLED": "false",
        "OBSERVABILITY_ENABLED": "false",
    }


def gateway_env(
    workdir: Path, port: int, plugins_yaml: Path, max_tool_retries: int, log_level: str
) -> dict[str, str]:
    return {
        **_settings_env(workdir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PLUGINS_ENABLED": "true",
        "PLUGINS_CONFIG_FILE": str(plugins_yaml),
        "SSRF_ALLOW_LOCALHOST": "true",
        "HEALTH_CHECK_INTERVAL": "3600",
        "MAX_TOOL_RETRIES": str(max_tool_retries),
        "LOG_LEVEL": log_level,
    }


def prepare_database(workdir: Path, timeout: float = 600) -> Path:
    """A sqlite database migrated by the gateway's own runner (`python -m mcpgateway.bootstrap_db`,
    what a deployment's migration job runs), for launch_gateway to start each gateway on a copy.

    Migrating a fresh database is most of a gateway's start-up, and the migrations of gateways
    started together serialize on one lock file; on a migrated copy each takes the restart path."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = start(
        "gateway migrations",
        [PY, "-m", "mcpgateway.bootstrap_db"],
        cwd=workdir,
        env={**_settings_env(workdir), "LOG_LEVEL": "INFO"},
        log_path=workdir / "bootstrap_db.log",
    )
    try:
        code = proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"mcpgateway.bootstrap_db took over {timeout}s:\n{proc.log_tail()}") from None
    finally:
        proc.stop()
    if code != 0:
        raise RuntimeError(f"mcpgateway.bootstrap_db exited {code}:\n{proc.log_tail()}")
    return workdir / "mcp.db"


@functools.cache
def mint_token() -> str:
    """An admin JWT from the gateway's own tool, signed with the secret every gateway here uses."""
    with tempfile.TemporaryDirectory(prefix="retry-e2e-token-") as cwd:
        env = {**_base_env(), **SECRETS}
        out = subprocess.run(
            [PY, "-m", "mcpgateway.utils.create_jwt_token", "-u", ADMIN, "--admin", "--secret", JWT_SECRET],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    return out.stdout.strip().splitlines()[-1]


def launch_gateway(
    workdir: Path,
    plugin: PluginSetup,
    max_tool_retries: int = 3,
    log_level: str = "DEBUG",
    extra_env: dict[str, str] | None = None,
    *,
    database: Path | None = None,
    extra_plugins: tuple[PluginSetup, ...] = (),
) -> Gateway:
    """Start the gateway in a clean working directory (it reads a .env from there); no wait.

    database: a copy of it (see prepare_database) is the gateway's; else it migrates a fresh one.
    extra_plugins: more stanzas in the same configuration file, after plugin's."""
    workdir.mkdir(parents=True, exist_ok=True)
    if database is not None:
        shutil.copyfile(database, workdir / "mcp.db")
    port = free_port()
    config_file = workdir / "plugins.yaml"
    config_file.write_text(plugins_yaml([plugin, *extra_plugins]))
    env = {**gateway_env(workdir, port, config_file, max_tool_retries, log_level), **(extra_env or {})}
    proc = start(
        f"gateway ({workdir.name})",
        [str(Path(PY).parent / "mcpgateway"), "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir,
        env=env,
        log_path=workdir / "gateway.log",
    )
    base = f"http://127.0.0.1:{port}"
    return Gateway(proc, port, workdir, plugin, max_tool_retries, httpx.Client(base_url=base), extra_plugins)


def start_gateway(
    workdir: Path, plugin: PluginSetup, max_tool_retries: int = 3, log_level: str = "DEBUG"
) -> Gateway:
    """launch_gateway, then wait until it is ready (stopping it if it never gets there)."""
    gw = launch_gateway(workdir, plugin, max_tool_retries, log_level)
    try:
        gw.wait_ready()
    except BaseException:
        gw.stop()
        raise
    return gw
