"""Helpers for the dashboards tests: every PromQL expression we ship, Grafana's variable
substitution, and a real Prometheus process.

- :func:`dashboard_queries` lists every panel target, annotation and variable query of the
  committed dashboard JSON; :func:`rule_exprs` every recording and alerting expression.
- :func:`substitute` does what Grafana does before it sends a query: ``$task_type`` with
  several values becomes a regex group ``(a|b)`` (values regex-escaped), ``$__rate_interval``
  / ``$__range`` / ``$__interval`` become concrete windows.
- :class:`Prometheus` is a running ``prometheus`` binary on a free loopback port with a tmp
  config and TSDB; :meth:`Prometheus.query` evaluates through ``/api/v1/query``.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = ROOT / "dashboards" / "grafana"
RULES_FILE = ROOT / "dashboards" / "prometheus" / "shadow-rules.yaml"
RULES_TEST_FILE = ROOT / "dashboards" / "prometheus" / "shadow-rules.test.yaml"

#: Concrete windows for Grafana's interval variables (the test's data spans about a minute).
WINDOWS = {"$__rate_interval": "5m", "$__range": "15m", "$__interval": "1m"}


@dataclass(frozen=True, slots=True)
class Query:
    """One expression we ship: where it lives (``dashboard / panel / refId`` or
    ``rules / group / name``) and its text."""

    where: str
    expr: str


def dashboard_queries(path: Path) -> tuple[list[Query], list[Query]]:
    """(panel targets + annotations, variable queries) of a dashboard JSON file."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    title = doc["title"]
    queries: list[Query] = []
    for panel in _panels(doc.get("panels", [])):
        for target in panel.get("targets", []):
            queries.append(Query(f"{title} / {panel['title']} / {target['refId']}", target["expr"]))
    for ann in doc.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            queries.append(Query(f"{title} / annotation {ann['name']}", ann["expr"]))
    variables = [
        Query(f"{title} / variable ${v['name']}", v["query"])
        for v in doc.get("templating", {}).get("list", [])
        if v.get("type") == "query"
    ]
    return queries, variables


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def rule_exprs(path: Path = RULES_FILE) -> list[tuple[str, Query]]:
    """(kind, query) for every rule: kind is ``record`` or ``alert``."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    out: list[tuple[str, Query]] = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            kind = "record" if "record" in rule else "alert"
            out.append((kind, Query(f"rules / {group['name']} / {rule[kind]}", rule["expr"])))
    return out


_REGEX_SPECIALS = re.compile(r"([\\.*+?^$()\[\]{}|])")


def regex_value(values: list[str]) -> str:
    """Grafana's multi-value format for Prometheus: ``(a|b)``, each value regex-escaped (the
    backslash doubled, because it sits inside a PromQL double-quoted string)."""
    escaped = [_REGEX_SPECIALS.sub(r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, variables: Mapping[str, list[str]]) -> str:
    for name, window in WINDOWS.items():
        expr = expr.replace(name, window)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", regex_value(variables[name]))
        expr = expr.replace("$" + name, regex_value(variables[name]))
    if "$" in expr:
        raise AssertionError(f"unsubstituted variable left in {expr!r}")
    return expr


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PromQLError(Exception):
    """Prometheus refused a query (bad syntax, unknown function...)."""


@dataclass(eq=False)
class Prometheus:
    """A real Prometheus process; ``close()`` stops it (idempotent)."""

    binary: str
    workdir: Path
    scrape_targets: list[str]
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES_FILE)],
            "scrape_configs": [
                {
                    "job_name": "shadow-sidecar",
                    "scrape_interval": "1s",
                    "static_configs": [{"targets": self.scrape_targets}],
                }
            ],
        }

    async def start(self) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()), encoding="utf-8")
        with (self.workdir / "prometheus.log").open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        await poll(self._ready, what="Prometheus to become ready", within=30.0)
        return self

    async def _ready(self) -> bool:
        assert self.proc is not None
        assert self.session is not None
        if self.proc.returncode is not None:
            log = (self.workdir / "prometheus.log").read_text(errors="replace")
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{log[-3000:]}")
        try:
            async with self.session.get(f"{self.url}/-/ready") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    async def api(self, path: str, **params: str) -> Any:
        assert self.session is not None
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at now; the result vector (a scalar counts as one series)."""
        data = await self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    async def label_values(self, variable_query: str) -> list[str]:
        """Evaluate a Grafana ``label_values(selector, label)`` variable query."""
        m = _LABEL_VALUES.match(variable_query.strip())
        if m is None:
            raise AssertionError(f"not a label_values() query: {variable_query!r}")
        series = await self.api("series", **{"match[]": m["selector"]})
        return sorted({s[m["label"]] for s in series if m["label"] in s})

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None


async def poll(
    check: Callable[[], Awaitable[bool]], *, what: str, within: float, every: float = 0.25
) -> None:
    """Until ``check()`` is true; ``within`` bounds a hang, it is not a timing assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {within} s")
        await asyncio.sleep(every)
