"""The Kafka SASL settings against a real broker behind an authenticating proxy.

The tansu build cannot authenticate (see :mod:`tests.kafka_proxy`), so
:class:`tests.kafka_proxy.BrokerProxy` answers the Kafka SASL requests in front of it (PLAIN
and SCRAM-SHA-256/512, the server side of each exchange) and lets a connection through to
the broker only once it has authenticated. The client side is the real one: the sidecar's
settings through :func:`shadow.sources.kafka_client.client_options` into aiokafka, for the
source's consumer and the publisher's producer alike; SASL_SSL adds a real TLS handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
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

pytestmark = pytest.mark.slow  # a real broker behind a SASL proxy per test

N = 90
USER, PASSWORD = "shadow", "s3cret,with=odd chars"


class Sasl:
    """A broker that takes only authenticated connections (optionally over TLS)."""

    def __init__(self, broker: Broker, proxy: BrokerProxy, ca: Path | None) -> None:
        self.broker, self.proxy, self.ca = broker, proxy, ca

    def settings(self, mechanism: str, **overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "agent": AGENT_SPEC,
            "source": [f"kafka://{self.broker.bootstrap}?events=ev&outcomes=oc&group=g"],
            "kafka_health_interval": 0.2,
            "batch_size": 50,
            "kafka_security_protocol": "SASL_SSL" if self.ca else "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": mechanism,
            "kafka_sasl_username": USER,
            "kafka_sasl_password": PASSWORD,
            "kafka_ssl_cafile": self.ca,
        }
        values.update(overrides)
        return values


SaslFactory = Callable[..., Awaitable[Sasl]]


@pytest.fixture
async def sasl_broker(tmp_path: Path) -> AsyncIterator[SaslFactory]:
    """``await sasl_broker(tls=False)``: tansu behind an authenticating proxy (user
    ``USER``), with topics ev, oc and cmp; this helper's own clients log in with PLAIN."""
    binary = require_broker()
    made: list[tuple[Broker, BrokerProxy]] = []

    async def make(*, tls: bool = False) -> Sasl:
        server_side: ssl.SSLContext | None = None
        ca_file: Path | None = None
        options: dict[str, Any] = {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": USER,
            "sasl_plain_password": PASSWORD,
        }
        if tls:
            ca = trustme.CA()
            ca_file = tmp_path / "ca.pem"
            ca.cert_pem.write_to_path(str(ca_file))
            server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1").configure_cert(server_side)
            options["security_protocol"] = "SASL_SSL"
            options["ssl_context"] = ssl.create_default_context(cafile=str(ca_file))
        port = free_port()
        proxy = BrokerProxy(port, context=server_side, users={USER: PASSWORD})
        await proxy.start()
        broker = Broker(
            binary,
            tmp_path / f"tansu-{len(made)}.log",
            port,
            advertised_port=proxy.port,
            client_options=options,
        )
        made.append((broker, proxy))
        await broker.start()
        await broker.create_topics({"ev": 2, "oc": 2, "cmp": 2})
        return Sasl(broker, proxy, ca_file)

    yield make
    for broker, proxy in made:
        await broker.stop()
        await proxy.stop()


@pytest.mark.parametrize(
    ("mechanism", "tls"),
    [("PLAIN", False), ("SCRAM-SHA-256", False), ("SCRAM-SHA-512", False), ("SCRAM-SHA-512", True)],
)
async def test_the_sidecar_authenticates_consumes_and_publishes(
    sasl_broker: SaslFactory, sidecar: SidecarFactory, mechanism: str, tls: bool
) -> None:
    sasl = await sasl_broker(tls=tls)
    sc = await sidecar(policy=POLICY, **sasl.settings(mechanism, kafka_comparisons_topic="cmp"))
    await compare_and_publish(sc, sasl.broker, N, f"through SASL {mechanism}")
    # The sidecar's own connections (not only this test's PLAIN ones) logged in.
    assert (mechanism, USER) in sasl.proxy.authenticated
    assert sasl.proxy.refused == []


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
async def test_a_wrong_password_is_refused_at_start_with_the_broker_reason(
    sasl_broker: SaslFactory, sidecar: SidecarFactory, mechanism: str
) -> None:
    sasl = await sasl_broker()
    with pytest.raises(ConfigError) as info:
        await sidecar(policy=POLICY, **sasl.settings(mechanism, kafka_sasl_password="Wr0ng-pw"))
    message = str(info.value)
    assert f"Kafka source kafka://{sasl.broker.bootstrap}: cannot reach the broker" in message
    assert "SASL: " in message
    assert "invalid credentials" in message
    assert "Wr0ng-pw" not in message  # a secret is never shown
    assert any("invalid credentials" in why for why in sasl.proxy.refused)


async def test_an_unauthenticated_client_never_reaches_the_broker(
    sasl_broker: SaslFactory, sidecar: SidecarFactory
) -> None:
    """No SASL settings: the proxy refuses the first request that is not ApiVersions, and
    the sidecar refuses to start, pointing at the security settings."""
    sasl = await sasl_broker()
    plain = sasl.settings(
        "PLAIN",
        kafka_security_protocol="PLAINTEXT",
        kafka_sasl_mechanism=None,
        kafka_sasl_username=None,
        kafka_sasl_password=None,
    )
    with pytest.raises(ConfigError, match="check the address and the security settings"):
        await sidecar(policy=POLICY, **plain)
    assert any("before authentication" in why for why in sasl.proxy.refused)
