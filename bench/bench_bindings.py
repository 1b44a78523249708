"""Process memory per team bound through the gateway's tool plugin bindings (issue 23 §7).

The gateway (1.0.7 and 1.1.0) keeps a plugin manager per context ``<team>::<tool>``; when a
``ToolPluginBinding`` row names a stanza for that team and tool, the manager's plugin objects get
the binding's ``config`` merged over the stanza's. So every team that binds its own
``max_retries``/``backoff_base_ms`` is one more distinct configuration in the process.

In-process, with the gateway's own ``TenantPluginManagerFactory`` (``db_factory`` over a sqlite
database holding only the ``ToolPluginBinding`` table) and one stanza of the plugin under test:
``--teams`` teams each bind one tool, and each team's manager is built and its plugin decides
``--keys`` failing results (each delay is checked against the team's bound
``backoff_base_ms``: a binding that did not apply fails the run). Managers never expire here
(``cache_ttl=0``), as within one 30 s TTL of a gateway serving every team. Each run is a fresh
process; RSS is VmRSS after the first team (imports, the factory, the first plugin object's
one-time cost) and after every team. Two bindings per plugin:

* ``distinct``: team ``i`` binds ``max_retries: 1 + i % 5`` and ``backoff_base_ms: 100 + i``,
  so every team is a distinct configuration;
* ``same``: every team binds the same config: what a context costs by itself (its manager, plugin
  object and binding row).

``distinct - same`` is the cost of one more distinct configuration.

Needs the gateway importable: run it with the gateway's venv (``tests/e2e/setup-venv.sh 1.1
target/e2e-venv-1.1 dist``; ``make bench`` does).

Usage: target/e2e-venv-1.1/bin/python bench/bench_bindings.py [--teams 1000] [--keys 3]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import subprocess
import sys

#: The plugins under test: (label, stanza name, kind). The stanza names avoid the gateway's
#: native fast path (see README "Which name"), as in the e2e tests.
PLUGINS = {
    "wasm": ("RetryWithBackoffWasmPlugin", "cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin"),
    "native": ("RetryWithBackoffNativePlugin", "cpex_retry_with_backoff.RetryWithBackoffPlugin"),
}

CHILD = r"""
import asyncio, json, logging, os, sys, tempfile, time
from pathlib import Path

name, kind, teams, keys = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
distinct = sys.argv[5] == "distinct"
tmp = Path(tempfile.mkdtemp(prefix="bench-bindings-"))
# The gateway's settings are read at import and refuse short or default secrets; its own
# database is never opened here.
os.environ.update({
    "JWT_SECRET_KEY": "bench-bindings-jwt-secret-0123456789abcdef",
    "AUTH_ENCRYPTION_SECRET": "bench-bindings-encryption-secret-0123456789",
    "PLATFORM_ADMIN_PASSWORD": "bench-bindings-admin-7f3a91",
    "DEFAULT_USER_PASSWORD": "bench-bindings-user-c28e54",
    "DATABASE_URL": f"sqlite:///{tmp / 'unused.db'}",
    "CACHE_TYPE": "memory",
})
logging.disable(logging.CRITICAL)

from cpex.framework import GlobalContext, ToolPostInvokePayload
from mcpgateway.db import ToolPluginBinding
from mcpgateway.plugins.gateway_plugin_manager import TenantPluginManagerFactory, make_context_id
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

logging.disable(logging.CRITICAL)  # the gateway's imports set up logging again
TOOL = "flaky-always-fail"
STANZA = {"max_retries": 2, "backoff_base_ms": 100, "max_backoff_ms": 60000, "jitter": False}


def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def team_id(i):
    return f"team-{i:05d}"


def bound_config(i):
    if distinct:
        return {"max_retries": 1 + i % 5, "backoff_base_ms": 100 + i}
    return {"max_retries": 3, "backoff_base_ms": 150}


async def main():
    engine = create_engine(f"sqlite:///{tmp / 'bindings.db'}")
    ToolPluginBinding.__table__.create(engine)
    Session = sessionmaker(bind=engine)
    with Session() as db:
        db.add_all(
            ToolPluginBinding(team_id=team_id(i), tool_name=TOOL, plugin_id=name, mode="enforce",
                              priority=170, config=bound_config(i), created_by="bench", updated_by="bench")
            for i in range(teams)
        )
        db.commit()
    config = tmp / "plugins.yaml"
    doc = {"plugins": [{"name": name, "kind": kind, "hooks": ["tool_post_invoke"], "mode": "sequential",
                        "priority": 170, "config": STANZA}],
           "plugin_dirs": [], "plugin_settings": {"plugin_timeout": 30}}
    config.write_text(json.dumps(doc))
    factory = TenantPluginManagerFactory(str(config), cache_ttl=0, db_factory=Session)
    start_kib = rss_kib()
    rss, wrong, plugins = {}, [], 0
    t0 = time.perf_counter()
    for i in range(teams):
        manager = await factory.get_manager(make_context_id(team_id(i), TOOL))
        plugins += manager.plugin_count
        expected = bound_config(i)["backoff_base_ms"]
        for k in range(keys):
            payload = ToolPostInvokePayload(name=TOOL, result={"content": [], "isError": True})
            context = GlobalContext(request_id=f"{i}-{k}", tenant_id=team_id(i))
            result, _ = await manager.invoke_hook("tool_post_invoke", payload, context)
            if result.retry_delay_ms != expected:
                wrong.append((i, k, result.retry_delay_ms, expected))
        rss[i + 1] = rss_kib()
    seconds = time.perf_counter() - t0
    await factory.shutdown()
    print(json.dumps({"start_kib": start_kib, "rss_kib": rss, "seconds": seconds,
                      "plugins": plugins, "wrong": wrong[:5], "wrong_count": len(wrong)}))

asyncio.run(main())
"""


def child(variant: str, teams: int, keys: int, bindings: str) -> dict[str, object]:
    name, kind = PLUGINS[variant]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name, kind, str(teams), str(keys), bindings],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    rss = {int(k): int(v) for k, v in result["rss_kib"].items()}  # type: ignore[attr-defined]
    result["rss_kib"] = rss
    return result


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--teams", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=3)
    args = parser.parse_args()
    if args.teams < 2:
        parser.error("--teams must be at least 2")

    print(
        f"mcp-contextforge-gateway {_version('mcp-contextforge-gateway')} on Python "
        f"{platform.python_version()} (cpex {_version('cpex')}, wasmtime-py {_version('wasmtime')}); "
        f"cpex-retry-with-backoff-wasm {_version('cpex-retry-with-backoff-wasm')}, native "
        f"cpex-retry-with-backoff {_version('cpex-retry-with-backoff')}"
    )
    print(
        f"{args.teams} teams, each binding one tool (ToolPluginBinding rows, sqlite), each team's "
        f"manager built by TenantPluginManagerFactory and {args.keys} failing results decided"
    )
    print()
    checkpoints = sorted({c for c in (1, 10, 100, args.teams) if c <= args.teams})
    header = "  ".join(f"{f'{c} team' + ('s' if c > 1 else ''):>10}" for c in checkpoints)
    print(
        "process RSS (MiB) after N teams; first team = RSS(1) - RSS before it (the first plugin "
        "object's one-time cost included);"
    )
    print("per further team = (RSS(N) - RSS(1)) / (N - 1); build+decide = wall time per team")
    print(
        f"  {'plugin':7}  {'bindings':8}  {'first team':>10}  {header}  {'per further team':>16}  "
        f"{'build+decide':>12}"
    )
    per_team: dict[tuple[str, str], float] = {}
    failed = False
    for variant in PLUGINS:
        for bindings in ("distinct", "same"):
            r = child(variant, args.teams, args.keys, bindings)
            rss: dict[int, int] = r["rss_kib"]  # type: ignore[assignment]
            if r["wrong_count"] or r["plugins"] != args.teams:
                failed = True
                print(
                    f"  {variant} {bindings}: {r['plugins']} plugin objects for {args.teams} teams, "
                    f"{r['wrong_count']} delays not the bound backoff_base_ms, e.g. {r['wrong']}",
                    file=sys.stderr,
                )
            kib = (rss[args.teams] - rss[1]) / (args.teams - 1)
            per_team[variant, bindings] = kib
            cells = "  ".join(f"{rss[c] / 1024:10.1f}" for c in checkpoints)
            first = (rss[1] - int(r["start_kib"])) / 1024  # type: ignore[call-overload]
            ms = float(r["seconds"]) / args.teams * 1000  # type: ignore[arg-type]
            print(f"  {variant:7}  {bindings:8}  {first:10.1f}  {cells}  {kib:12.1f} KiB  {ms:9.2f} ms")
    print()
    print("per additional distinct configuration (distinct - same, per team):")
    for variant in PLUGINS:
        extra = per_team[variant, "distinct"] - per_team[variant, "same"]
        print(f"  {variant:7}  {extra:8.1f} KiB")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
