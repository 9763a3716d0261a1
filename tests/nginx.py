"""A real nginx on loopback, mirroring a host to the sidecar (``mirror`` +
``mirror_request_body``), as docs/mirroring.md configures it.

:func:`nginx_config` is the documented configuration with the ports filled in;
:class:`Nginx` runs it in the foreground (``daemon off``, ``master_process off``: one
process, the test's own user, so it can use the test's directories) with its own prefix,
pid file, error log and temp paths, on a free port. Used by the tests and by the bench.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["Nginx", "free_port", "nginx_config"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_config(
    prefix: Path,
    *,
    listen: int,
    host: int,
    sidecar: int,
    mirror: bool = True,
    token: str | None = None,
    mirror_timeout_ms: int = 200,
) -> str:
    """The nginx configuration of docs/mirroring.md for these loopback ports; ``mirror`` off
    gives the same proxy without the mirror (the bench's baseline)."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    token_line = f'        proxy_set_header X-Shadow-Ingest-Token "{token}";\n' if token else ""
    mirror_lines = (
        "            mirror /_shadow_mirror;\n            mirror_request_body on;\n"
        if mirror
        else ""
    )
    t = mirror_timeout_ms
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    upstream host {{ server 127.0.0.1:{host}; keepalive 64; }}
    upstream shadow_sidecar {{ server 127.0.0.1:{sidecar}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{listen};
        # The whole body in memory, so the mirror gets it (with the default 16k buffer a
        # larger body goes to a temp file and the mirror sent it empty).
        client_max_body_size 16m;
        client_body_buffer_size 16m;
        location / {{
{mirror_lines}            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://host;
        }}
        location = /_shadow_mirror {{
            internal;
            proxy_pass http://shadow_sidecar/v1/mirror$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{token_line}            # A hung sidecar holds the client's next request on this connection for
            # at most these, never the primary's answer.
            proxy_connect_timeout {t}ms;
            proxy_send_timeout {t}ms;
            proxy_read_timeout {t}ms;
        }}
    }}
}}
"""


class Nginx:
    """nginx in the foreground with ``config`` under ``prefix``; :meth:`stop` is
    idempotent."""

    def __init__(self, binary: str, prefix: Path, config: str, port: int) -> None:
        self.binary = binary
        self.prefix = prefix
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        prefix.mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        argv = [self.binary, "-p", str(self.prefix), "-c", str(self.conf)]
        argv += ["-e", str(self.prefix / "error.log")]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err} {self.error_log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.02)
        raise RuntimeError("nginx did not start listening")

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
