"""TLS, mutual TLS and the token check on a real SentimentService (real server on loopback, real tiny model),
with certificates made in the test; and the settings that configure them."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from nlpsuite.services.sentiment.client import AsyncSentimentClient, SentimentClient
from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.shared.config import (AuthSettings, ClientTlsSettings, ConfigError, TlsSettings, load_settings)
from nlpsuite.shared.security import open_channel
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc
from nlpsuite.shared.local_run import ServerThread
from tests.support import settings_for
from tests.tls_certs import make_certs

TEXT = ["Quillon Bank shares slump after the regulator opens a probe"]
TOKEN = "t0ken-for-tests-5f1c"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def _serve(version, **overrides) -> ServerThread:
    return ServerThread(SentimentService(settings_for(version, **overrides))).start()


def _target(srv: ServerThread) -> str:
    return f"localhost:{srv.port}"  # the server certificate names localhost and 127.0.0.1


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


def _refused(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


# -- TLS -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server(built_classifier, certs):
    tls = TlsSettings(cert_file=certs.server.cert, key_file=certs.server.key)
    with _serve(built_classifier, tls=tls) as srv:
        yield srv


def test_tls_call_works_with_the_ca(tls_server, certs):
    with SentimentClient(_target(tls_server), tls=ClientTlsSettings(ca_file=certs.ca)) as c:
        result = c.analyze(TEXT).results[0]
    assert result.label and 0 < result.confidence <= 1


def test_tls_server_refuses_plaintext_and_unknown_ca(tls_server, certs):
    with SentimentClient(_target(tls_server), timeout=10) as plain:
        assert _refused(lambda: plain.analyze(TEXT)) == grpc.StatusCode.UNAVAILABLE
    with SentimentClient(_target(tls_server), timeout=10, tls=ClientTlsSettings(ca_file=certs.other_ca)) as wrong:
        assert _refused(lambda: wrong.analyze(TEXT)) == grpc.StatusCode.UNAVAILABLE


def test_health_only_port_answers_probes_in_plaintext_and_nothing_else(built_classifier, certs):
    tls = TlsSettings(cert_file=certs.server.cert, key_file=certs.server.key)
    with _serve(built_classifier, tls=tls, auth=AuthSettings(token=TOKEN), health_port=0) as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.server.health_port}") as channel:
        assert srv.server.health_port not in (None, 0, srv.port)
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        call = lambda: stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=TEXT), timeout=10,
                                    metadata=[("authorization", f"Bearer {TOKEN}")])
        assert _refused(call) == grpc.StatusCode.UNIMPLEMENTED
        srv.stop_async(grace=0.5).result(30)  # the health-only port closes with the server
        assert _refused(lambda: _health(channel)) == grpc.StatusCode.UNAVAILABLE


def test_server_name_override_checks_the_name_in_the_certificate(tls_server, certs):
    target = f"127.0.0.1:{tls_server.port}"
    with SentimentClient(target, tls=ClientTlsSettings(ca_file=certs.ca, server_name="localhost")) as c:
        assert c.analyze(TEXT).results[0].label
    with SentimentClient(target, timeout=10, tls=ClientTlsSettings(ca_file=certs.ca, server_name="evil.example")) as c:
        assert _refused(lambda: c.analyze(TEXT)) == grpc.StatusCode.UNAVAILABLE


# -- mutual TLS ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mtls_server(built_classifier, certs):
    tls = TlsSettings(cert_file=certs.server.cert, key_file=certs.server.key, client_ca_file=certs.ca)
    with _serve(built_classifier, tls=tls) as srv:
        yield srv


def test_mtls_needs_a_client_certificate_from_the_trusted_ca(mtls_server, certs):
    target = _target(mtls_server)
    with SentimentClient(target, timeout=10, tls=ClientTlsSettings(ca_file=certs.ca)) as no_cert:
        assert _refused(lambda: no_cert.analyze(TEXT)) == grpc.StatusCode.UNAVAILABLE
    stranger = ClientTlsSettings(ca_file=certs.ca, cert_file=certs.other_client.cert, key_file=certs.other_client.key)
    with SentimentClient(target, timeout=10, tls=stranger) as c:
        assert _refused(lambda: c.analyze(TEXT)) == grpc.StatusCode.UNAVAILABLE
    ours = ClientTlsSettings(ca_file=certs.ca, cert_file=certs.client.cert, key_file=certs.client.key)
    with SentimentClient(target, tls=ours) as c:
        assert c.analyze(TEXT).results[0].label


# -- token -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_server(built_classifier):
    with _serve(built_classifier, auth=AuthSettings(token=TOKEN)) as srv:
        yield srv


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x", TOKEN[:-1]])
def test_missing_or_wrong_token_is_unauthenticated(token_server, token):
    with SentimentClient(token_server.target, token=token) as c:
        assert _refused(lambda: c.analyze(TEXT)) == grpc.StatusCode.UNAUTHENTICATED


def test_token_in_the_wrong_scheme_is_unauthenticated(token_server):
    with grpc.insecure_channel(token_server.target) as channel:
        stub = sentiment_pb2_grpc.SentimentServiceStub(channel)
        for metadata in ([("authorization", TOKEN)], [("authorization", f"Basic {TOKEN}")], [("x-token", TOKEN)]):
            call = lambda: stub.Analyze(sentiment_pb2.AnalyzeRequest(texts=TEXT), metadata=metadata, timeout=10)
            assert _refused(call) == grpc.StatusCode.UNAUTHENTICATED


def test_right_token_is_served_and_refusals_are_counted(token_server):
    with SentimentClient(token_server.target, token=TOKEN) as c:
        assert c.analyze(TEXT).results[0].label
        replies = list(c.analyze_stream([("a", TEXT[0]), ("b", "Profit warning from Halden Pharma")], timeout=30))
    assert sorted(r.request_id for r in replies) == ["a", "b"] and all(not r.error for r in replies)
    with SentimentClient(token_server.target) as c:
        _refused(lambda: c.analyze(TEXT))
    metrics = token_server.service.metrics
    assert metrics.requests.labels("sentiment", "Analyze", "UNAUTHENTICATED")._value.get() >= 1


def test_streaming_call_without_token_is_unauthenticated(token_server):
    with SentimentClient(token_server.target) as c:
        stream = c.analyze_stream([("a", TEXT[0])], timeout=10)
        assert _refused(lambda: list(stream)) == grpc.StatusCode.UNAUTHENTICATED


def test_health_is_open_without_token_and_reflection_is_not(token_server):
    with grpc.insecure_channel(token_server.target) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        assert _refused(lambda: list(stub.ServerReflectionInfo(request, timeout=10))) == \
            grpc.StatusCode.UNAUTHENTICATED


def test_async_client_with_tls_and_token(built_classifier, certs):
    tls = TlsSettings(cert_file=certs.server.cert, key_file=certs.server.key, client_ca_file=certs.ca)
    client_tls = ClientTlsSettings(ca_file=certs.ca, cert_file=certs.client.cert, key_file=certs.client.key)

    async def call(token):
        async with AsyncSentimentClient(target, tls=client_tls, token=token) as c:
            return (await c.analyze(TEXT)).results[0].label

    with _serve(built_classifier, tls=tls, auth=AuthSettings(token=TOKEN, open_reflection=True)) as srv:
        target = _target(srv)
        assert asyncio.run(call(TOKEN))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            asyncio.run(call("nope"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with open_channel(target, client_tls) as channel:  # open reflection: no token needed
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                  timeout=10)
            names = {s.name for r in responses for s in r.list_services_response.service}
        assert "nlpsuite.v1.SentimentService" in names


def test_reflection_can_be_turned_off(built_classifier):
    with _serve(built_classifier, reflection=False) as srv, grpc.insecure_channel(srv.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        assert _refused(lambda: list(stub.ServerReflectionInfo(request, timeout=10))) == grpc.StatusCode.UNIMPLEMENTED
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


# -- settings --------------------------------------------------------------------------------------------

def test_token_and_tls_from_env_and_mounted_files(tmp_path, monkeypatch, certs):
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")  # as `kubectl create secret --from-file` may leave it
    monkeypatch.setenv("NLPSUITE_CHAT__AUTH__TOKEN_FILE", str(secret))
    monkeypatch.setenv("NLPSUITE_CHAT__TLS__CERT_FILE", str(certs.server.cert))
    monkeypatch.setenv("NLPSUITE_CHAT__TLS__KEY_FILE", str(certs.server.key))
    monkeypatch.setenv("NLPSUITE_SENTIMENT__AUTH__TOKEN", "inline-" + TOKEN)
    s = load_settings()
    assert s.chat.auth.secret().get_secret_value() == TOKEN and s.chat.tls.enabled and not s.chat.tls.client_ca_file
    assert s.sentiment.auth.secret().get_secret_value() == "inline-" + TOKEN
    assert not s.recommend.auth.enabled and not s.recommend.tls.enabled
    assert TOKEN not in repr(s) and TOKEN not in s.model_dump_json()


@pytest.mark.parametrize("env, needle", [
    ({"TLS__CERT_FILE": "{cert}"}, "cert_file and key_file go together"),
    ({"TLS__KEY_FILE": "{key}"}, "cert_file and key_file go together"),
    ({"TLS__CLIENT_CA_FILE": "{ca}"}, "client_ca_file (mutual TLS) needs cert_file"),
    ({"AUTH__TOKEN": "x", "AUTH__TOKEN_FILE": "{ca}"}, "set token or token_file, not both"),
    ({"AUTH__TOKEN": "  "}, "token is empty"),
])
def test_bad_tls_and_auth_settings_are_config_errors(monkeypatch, certs, env, needle):
    paths = dict(cert=certs.server.cert, key=certs.server.key, ca=certs.ca)
    for key, value in env.items():
        monkeypatch.setenv(f"NLPSUITE_RECOMMEND__{key}", value.format(**paths))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert needle in str(err.value) and "recommend." in str(err.value)


@pytest.mark.parametrize("env, needle", [
    ({"TLS__CERT_FILE": "/nonexistent.crt", "TLS__KEY_FILE": "{key}"}, "tls.cert_file /nonexistent.crt cannot be read"),
    ({"TLS__CERT_FILE": "{cert}", "TLS__KEY_FILE": "{key}", "TLS__CLIENT_CA_FILE": "/nope/ca.crt"},
     "tls.client_ca_file /nope/ca.crt cannot be read"),
    ({"AUTH__TOKEN_FILE": "/nonexistent-token"}, "auth.token_file /nonexistent-token cannot be read"),
    ({"AUTH__TOKEN_FILE": "{empty}"}, "auth.token_file {empty} is empty"),
])
def test_serve_stops_at_start_when_a_named_file_is_missing_or_empty(monkeypatch, tmp_path, certs, capsys, env,
                                                                    needle):
    # Files are read when the server starts (settings also load where they are not mounted, e.g. in CI).
    from nlpsuite.cli import main

    empty = tmp_path / "empty"
    empty.write_text("\n")
    paths = dict(cert=certs.server.cert, key=certs.server.key, ca=certs.ca, empty=empty)
    monkeypatch.setenv("NLPSUITE_SENTIMENT__HOST", "127.0.0.1")
    monkeypatch.setenv("NLPSUITE_SENTIMENT__PORT", "0")
    monkeypatch.setenv("NLPSUITE_SENTIMENT__MODEL__NAME", "sentiment")
    monkeypatch.setenv("NLPSUITE_SENTIMENT__MODEL__REPOSITORY", str(tmp_path / "no-models"))
    for key, value in env.items():
        monkeypatch.setenv(f"NLPSUITE_SENTIMENT__{key}", value.format(**paths))
    assert main(["serve", "sentiment"]) == 2
    assert needle.format(**paths) in capsys.readouterr().err


def test_client_tls_settings_need_cert_and_key_together(certs):
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        ClientTlsSettings(ca_file=certs.ca, cert_file=certs.client.cert)
    with pytest.raises(ValueError, match="tls, token and priority configure the client's own channel"):
        SentimentClient("localhost:1", channel=grpc.insecure_channel("localhost:1"), token=TOKEN)
