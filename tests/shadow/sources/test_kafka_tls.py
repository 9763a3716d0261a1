"""The Kafka security settings against a real broker over TLS, with client certificates.

tansu ``v0.6.0`` cannot serve TLS itself, so :class:`tests.kafka_proxy.BrokerProxy` terminates
it in front of the broker, as a TLS-terminating load balancer does in front of a real
cluster: tansu advertises the proxy's port, so every connection of every client (the
source's consumer, the publisher's producer, this test's own admin and producer) goes
through a real TLS handshake that checks the server's certificate against the CA the
sidecar is given and requires a client certificate signed by the test CA.

What a refusal looks like matters as much: a sidecar that does not trust the broker's
certificate, or presents none, fails at start-up with a configuration error that says what
TLS refused (aiokafka itself only logs it).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from shadow.errors import ConfigError
from tests.kafka_broker import Broker, free_port
from tests.kafka_proxy import BrokerProxy
from tests.shadow.conftest import SidecarFactory
from tests.shadow.sources.conftest import require_broker
from tests.shadow.sources.kafka_data import AGENT_SPEC, POLICY, compare_and_publish

pytestmark = pytest.mark.slow  # a real broker behind a TLS proxy per test

N = 120


@dataclass(frozen=True)
class Tls:
    """A broker reachable only over mutual TLS, and the files a client needs."""

    broker: Broker
    ca: Path  # the CA that signed the broker's and the client's certificates
    cert: Path  # a client certificate the broker accepts
    key: Path
    other_ca: Path  # a CA that signed nothing here

    def settings(self, **overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "agent": AGENT_SPEC,
            "source": [f"kafka://{self.broker.bootstrap}?events=ev&outcomes=oc&group=g"],
            "kafka_health_interval": 0.2,
            "batch_size": 50,
            "kafka_security_protocol": "SSL",
            "kafka_ssl_cafile": self.ca,
            "kafka_ssl_certfile": self.cert,
            "kafka_ssl_keyfile": self.key,
        }
        values.update(overrides)
        return values


@pytest.fixture
async def tls(tmp_path: Path) -> AsyncIterator[Tls]:
    binary = require_broker()
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("shadow-sidecar.test")
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "client.pem",
        "key": tmp_path / "client.key",
        "other": tmp_path / "other-ca.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    trustme.CA().cert_pem.write_to_path(str(files["other"]))

    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(server_side)
    ca.configure_trust(server_side)
    server_side.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    client_side = ssl.create_default_context(cafile=str(files["ca"]))
    client_side.load_cert_chain(str(files["cert"]), str(files["key"]))

    port = free_port()
    proxy = BrokerProxy(port, context=server_side)
    await proxy.start()
    broker = Broker(
        binary,
        tmp_path / "tansu.log",
        port,
        advertised_port=proxy.port,
        client_options={"security_protocol": "SSL", "ssl_context": client_side},
    )
    try:
        await broker.start()
        await broker.create_topics({"ev": 2, "oc": 2, "cmp": 2})
        yield Tls(broker, files["ca"], files["cert"], files["key"], files["other"])
    finally:
        await broker.stop()
        await proxy.stop()


async def test_the_sidecar_consumes_and_publishes_over_mutual_tls(
    tls: Tls, sidecar: SidecarFactory
) -> None:
    sc = await sidecar(policy=POLICY, **tls.settings(kafka_comparisons_topic="cmp"))
    await compare_and_publish(sc, tls.broker, N, "over TLS")
    assert (await sc.get("/readyz")).status == 200


async def test_a_broker_certificate_from_another_ca_is_refused_with_the_tls_reason(
    tls: Tls, sidecar: SidecarFactory
) -> None:
    with pytest.raises(ConfigError) as info:
        await sidecar(policy=POLICY, **tls.settings(kafka_ssl_cafile=tls.other_ca))
    message = str(info.value)
    assert f"Kafka source kafka://{tls.broker.bootstrap}" in message
    assert "cannot reach the broker" in message
    assert "TLS: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed" in message
    assert "_ssl.c" not in message


async def test_no_client_certificate_is_refused_with_the_tls_reason(
    tls: Tls, sidecar: SidecarFactory
) -> None:
    with pytest.raises(ConfigError) as info:
        await sidecar(
            policy=POLICY, **tls.settings(kafka_ssl_certfile=None, kafka_ssl_keyfile=None)
        )
    message = str(info.value)
    assert "cannot reach the broker" in message
    assert "TLS: the broker closed the connection right after the handshake" in message
    assert "client certificate" in message


async def test_plaintext_to_a_tls_broker_is_refused_at_start(
    tls: Tls, sidecar: SidecarFactory
) -> None:
    """No TLS settings at all: the broker's TLS port does not answer Kafka; the error names
    the broker and points at the security settings."""
    plain = tls.settings(
        kafka_security_protocol="PLAINTEXT",
        kafka_ssl_cafile=None,
        kafka_ssl_certfile=None,
        kafka_ssl_keyfile=None,
    )
    with pytest.raises(ConfigError, match="check the address and the security settings"):
        await sidecar(policy=POLICY, **plain)
