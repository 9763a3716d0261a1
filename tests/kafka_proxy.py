"""TLS and SASL in front of the test broker, which cannot serve them itself.

The tansu build the tests use (``v0.6.0``) refuses ``--cert`` together with ``--key``, so it
cannot speak TLS, and with ``--authentication`` its memory storage cannot create the first
SCRAM user (the user-creation call is itself refused as not authenticated). So
:class:`BrokerProxy` stands in front of it, as a TLS-terminating load balancer or an
authenticating gateway stands in front of a real cluster; tansu advertises the proxy's port,
so every client connection goes through it:

- **TLS** (``context``): the proxy's listening socket is a real TLS server (Python's
  ``ssl``); with ``verify_mode = CERT_REQUIRED`` it demands a client certificate (mTLS).
- **SASL** (``users``: name → password): before a connection reaches the broker, the proxy
  answers the Kafka SASL requests itself, as a broker does: ``SaslHandshake`` (v0/v1) with
  the mechanisms ``PLAIN``, ``SCRAM-SHA-256`` and ``SCRAM-SHA-512``, then
  ``SaslAuthenticate`` (v0/v1) with a server-side PLAIN check or a full SCRAM exchange
  (RFC 5802: salted password, client proof checked, server signature sent). ``ApiVersions``
  is passed to the broker; any other request before authentication closes the connection,
  and so does a failed authentication, after an ``SASL_AUTHENTICATION_FAILED`` answer.

This is test scaffolding in front of a real broker: the client side (aiokafka, with the
sidecar's settings) is the real one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import ssl
import struct
from collections.abc import Coroutine, Mapping
from typing import Any

from tests.kafka_broker import free_port

__all__ = ["MECHANISMS", "BrokerProxy"]

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
_API_VERSIONS, _HANDSHAKE, _AUTHENTICATE = 18, 17, 36
_UNSUPPORTED_MECHANISM, _ILLEGAL_STATE, _AUTH_FAILED = 33, 34, 58
_ITERATIONS = 4096


class _Refused(Exception):
    """Close the connection (after the answer already sent, if any)."""


class BrokerProxy:
    """Listens on a free loopback port and pipes each connection to ``127.0.0.1:target``:
    TLS with ``context``, SASL first with ``users`` (see the module docstring)."""

    def __init__(
        self,
        target: int,
        *,
        context: ssl.SSLContext | None = None,
        users: Mapping[str, str] | None = None,
    ) -> None:
        self.target = target
        self.context = context
        self.users = dict(users) if users is not None else None
        self.port = free_port()
        self.authenticated: list[tuple[str, str]] = []  # (mechanism, user) that got through
        self.refused: list[str] = []  # why connections were refused
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, ssl=self.context
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._close_pipes()
        if server is not None:
            await server.wait_closed()

    async def cut(self) -> None:
        """A network partition: every piped connection is closed and each new one is closed
        as soon as it is accepted, until :meth:`mend`. To a client this is a broker gone
        away; the broker behind keeps running with everything it holds (a restarted memory
        broker would not: it forgets its topics, and acknowledges a write to one it forgot
        without keeping it)."""
        self._cut = True
        await self._close_pipes()

    def mend(self) -> None:
        """End a :meth:`cut`: new connections reach the broker again."""
        self._cut = False

    async def _close_pipes(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        if self.users is not None:
            try:
                await self._authenticate(reader, writer, up_reader, up_writer)
            except (_Refused, asyncio.IncompleteReadError, OSError, ssl.SSLError) as e:
                if isinstance(e, _Refused):
                    self.refused.append(str(e))
                for w in (writer, up_writer):
                    with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                        w.close()
                return
        self._spawn(_pipe(reader, up_writer))
        self._spawn(_pipe(up_reader, writer))

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Until SASL succeeds: ApiVersions goes to the broker, SASL is answered here."""
        assert self.users is not None
        mechanism: str | None = None
        scram: _Scram | None = None
        while True:
            frame = await _read_frame(reader)
            api_key, version, correlation = struct.unpack_from(">hhi", frame)
            if api_key == _API_VERSIONS:
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                await up_writer.drain()
                answer = await _read_frame(up_reader)
                writer.write(struct.pack(">i", len(answer)) + answer)
                await writer.drain()
                continue
            if api_key not in (_HANDSHAKE, _AUTHENTICATE) or version > 1:
                raise _Refused(f"request {api_key} v{version} before authentication")
            body = _skip_client_id(frame, 8)
            if api_key == _HANDSHAKE:
                (size,) = struct.unpack_from(">h", frame, body)
                asked = frame[body + 2 : body + 2 + size].decode()
                known = asked in MECHANISMS
                mechanism = asked if known else None
                await _answer(
                    writer, correlation, _handshake_body(0 if known else _UNSUPPORTED_MECHANISM)
                )
                if not known:
                    raise _Refused(f"mechanism {asked} not enabled")
                continue
            if mechanism is None:
                await _answer(writer, correlation, _auth_body(version, _ILLEGAL_STATE, "", b""))
                raise _Refused("SaslAuthenticate before SaslHandshake")
            (size,) = struct.unpack_from(">i", frame, body)
            token = frame[body + 4 : body + 4 + size]
            if mechanism == "PLAIN":
                _, user, password = token.decode().split("\0")
                if self.users.get(user) != password or not password:
                    await self._fail(writer, correlation, version, mechanism, user)
                await _answer(writer, correlation, _auth_body(version, 0, None, b""))
                self.authenticated.append((mechanism, user))
                return
            if scram is None:
                scram = _Scram(mechanism, token.decode(), self.users)
                await _answer(writer, correlation, _auth_body(version, 0, None, scram.first))
                continue
            final = scram.finish(token.decode())
            if final is None:
                await self._fail(writer, correlation, version, mechanism, scram.user)
            assert final is not None
            await _answer(writer, correlation, _auth_body(version, 0, None, final.encode()))
            self.authenticated.append((mechanism, scram.user))
            return

    async def _fail(
        self, writer: asyncio.StreamWriter, correlation: int, version: int, mech: str, user: str
    ) -> None:
        message = (
            "Authentication failed during authentication due to invalid credentials with "
            f"SASL mechanism {mech}"
        )
        await _answer(writer, correlation, _auth_body(version, _AUTH_FAILED, message, b""))
        raise _Refused(f"{mech} user {user!r}: invalid credentials")


class _Scram:
    """The server side of one SCRAM exchange (RFC 5802), for a user in ``users``."""

    def __init__(self, mechanism: str, client_first: str, users: Mapping[str, str]) -> None:
        self.hash = _HASHES[mechanism]
        bare = client_first.split(",", 2)[2]  # after the GS2 header "n,,"
        attrs = dict(part.split("=", 1) for part in bare.split(","))
        self.user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
        password = users.get(self.user)
        salt = secrets.token_bytes(16)
        # An unknown user gets a made-up exchange that fails at the end, as brokers do.
        secret = (password or secrets.token_hex(16)).encode()
        self.known = password is not None
        self.salted = hashlib.pbkdf2_hmac(self.hash().name, secret, salt, _ITERATIONS)
        nonce = attrs["r"] + secrets.token_urlsafe(18)
        self.first_text = f"r={nonce},s={base64.b64encode(salt).decode()},i={_ITERATIONS}"
        self.first = self.first_text.encode()
        self.bare = bare
        self.nonce = nonce

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash).digest()

    def finish(self, client_final: str) -> str | None:
        """The server-final message, or ``None`` when the proof is wrong."""
        without_proof, _, proof = client_final.rpartition(",p=")
        if not without_proof.endswith(f"r={self.nonce}") or not self.known:
            return None
        auth = f"{self.bare},{self.first_text},{without_proof}".encode()
        client_key = self._hmac(self.salted, b"Client Key")
        stored = self.hash(client_key).digest()
        signature = self._hmac(stored, auth)
        given = base64.b64decode(proof)
        recovered = bytes(a ^ b for a, b in zip(given, signature, strict=False))
        if len(given) != len(signature) or self.hash(recovered).digest() != stored:
            return None
        server_key = self._hmac(self.salted, b"Server Key")
        return "v=" + base64.b64encode(self._hmac(server_key, auth)).decode()


def _skip_client_id(frame: bytes, at: int) -> int:
    size: int = struct.unpack_from(">h", frame, at)[0]
    return at + 2 + max(size, 0)


def _handshake_body(error: int) -> bytes:
    names = b"".join(struct.pack(">h", len(m)) + m.encode() for m in MECHANISMS)
    return struct.pack(">hi", error, len(MECHANISMS)) + names


def _auth_body(version: int, error: int, message: str | None, token: bytes) -> bytes:
    text = b"\xff\xff" if message is None else struct.pack(">h", len(message)) + message.encode()
    body = struct.pack(">h", error) + text + struct.pack(">i", len(token)) + token
    return body + (struct.pack(">q", 0) if version >= 1 else b"")


async def _answer(writer: asyncio.StreamWriter, correlation: int, body: bytes) -> None:
    payload = struct.pack(">i", correlation) + body
    writer.write(struct.pack(">i", len(payload)) + payload)
    await writer.drain()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
            writer.close()
