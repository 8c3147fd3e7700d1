"""The monitor's Kafka TLS/SASL settings reach kafka-python's constructor arguments, secrets come from env or
mounted files, and combinations that cannot work are ConfigErrors. (The local Tansu broker speaks neither TLS nor
SASL, so these are checked at the arguments kafka-python receives, not against a live secured broker.)"""
from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from nlpsuite.services.monitor.config import KafkaSettings, load_monitor_settings
from nlpsuite.shared.config import ConfigError

PASSWORD = "kafka-pa55-7d2e"


@pytest.fixture
def pem(tmp_path):
    def make(name: str):
        path = tmp_path / name
        path.write_text("-----BEGIN CERTIFICATE-----\n")
        return path
    return make


def _env(monkeypatch, **values):
    for key, value in values.items():
        monkeypatch.setenv(f"NLPSUITE_MONITOR_KAFKA__{key.upper()}", str(value))


def test_sasl_ssl_with_mutual_tls_reaches_every_client(monkeypatch, tmp_path, pem):
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    key_password = tmp_path / "key-password"
    key_password.write_text("k3y-pass")
    _env(monkeypatch, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="monitor",
         sasl_plain_password_file=secret, ssl_cafile=pem("ca.pem"), ssl_certfile=pem("client.pem"),
         ssl_keyfile=pem("client.key"), ssl_password_file=key_password, ssl_check_hostname="false")
    k = load_monitor_settings().kafka
    expected = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "monitor",
                "sasl_plain_password": PASSWORD, "ssl_cafile": str(tmp_path / "ca.pem"),
                "ssl_certfile": str(tmp_path / "client.pem"), "ssl_keyfile": str(tmp_path / "client.key"),
                "ssl_password": "k3y-pass", "ssl_check_hostname": False}
    for kwargs in (k.consumer("g"), k.producer(), k.common()):
        assert {name: kwargs.get(name) for name in expected} == expected
    assert PASSWORD not in repr(k) and PASSWORD not in k.model_dump_json()


def test_every_argument_is_one_kafka_python_accepts(pem):
    k = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_plain_username="u",
                      sasl_plain_password=PASSWORD, ssl_cafile=pem("ca.pem"), ssl_certfile=pem("c.pem"),
                      ssl_keyfile=pem("c.key"))
    for cls, kwargs in ((KafkaConsumer, k.consumer("g", max_poll_records=5)), (KafkaProducer, k.producer()),
                        (KafkaAdminClient, k.common())):
        accepted = set(cls.DEFAULT_CONFIG)
        assert set(kwargs) <= accepted, (cls.__name__, set(kwargs) - accepted)


def test_plain_ssl_without_client_certificate_and_plaintext_default(pem):
    k = KafkaSettings(security_protocol="SSL", ssl_cafile=pem("ca.pem"))
    c = k.common()
    assert c["security_protocol"] == "SSL" and c["ssl_cafile"].endswith("ca.pem") and c["ssl_check_hostname"] is True
    assert not {"ssl_certfile", "ssl_keyfile", "sasl_mechanism", "sasl_plain_password"} & set(c)
    plain = KafkaSettings().common()
    assert plain["security_protocol"] == "PLAINTEXT" and not any(n.startswith(("ssl_", "sasl_")) for n in plain)


@pytest.mark.parametrize("env, needle", [
    ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "needs sasl_plain_username and sasl_plain_password"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "u"},
     "needs sasl_plain_username and sasl_plain_password"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_plain_username": "u",
      "sasl_plain_password": "p"}, "sasl_mechanism"),
    ({"sasl_mechanism": "PLAIN", "sasl_plain_username": "u", "sasl_plain_password": "p"},
     "security_protocol is PLAINTEXT"),
    ({"security_protocol": "SSL", "ssl_certfile": "{cert}"}, "ssl_certfile and ssl_keyfile go together"),
    ({"security_protocol": "SSL", "ssl_keyfile": "{cert}"}, "ssl_certfile and ssl_keyfile go together"),
    ({"ssl_cafile": "{cert}"}, "security_protocol is PLAINTEXT"),
    ({"security_protocol": "SSL", "ssl_password": "p"}, "ssl_password is the password of ssl_keyfile"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u",
      "sasl_plain_password": "p", "sasl_plain_password_file": "{cert}"}, "not both"),
])
def test_bad_combinations_are_config_errors(monkeypatch, pem, env, needle):
    cert = pem("c.pem")
    _env(monkeypatch, **{k: v.format(cert=cert) for k, v in env.items()})
    with pytest.raises(ConfigError) as err:
        load_monitor_settings()
    assert needle in str(err.value) and "kafka" in str(err.value)


def test_missing_files_are_config_errors_when_the_clients_are_built(tmp_path, pem):
    # Settings load where the Secrets are not mounted (CI renders the manifests); the files are read when used.
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    cases = [
        (dict(security_protocol="SSL", ssl_cafile="/nonexistent/ca.pem"), "kafka.ssl_cafile /nonexistent/ca.pem does not exist"),
        (dict(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_plain_username="u",
              sasl_plain_password_file="/nonexistent/pw"), "kafka.sasl_plain_password_file /nonexistent/pw cannot be read"),
        (dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_plain_username="u",
              sasl_plain_password_file=empty), f"kafka.sasl_plain_password_file {empty} is empty"),
        (dict(security_protocol="SSL", ssl_certfile=pem("c.pem"), ssl_keyfile=pem("c.key"),
              ssl_password_file="/nonexistent/kp"), "kafka.ssl_password_file /nonexistent/kp cannot be read"),
    ]
    for fields, needle in cases:
        k = KafkaSettings(**fields)
        for build in (k.common, k.producer, lambda: k.consumer("g")):
            with pytest.raises(ConfigError) as err:
                build()
            assert needle in str(err.value)


def test_monitor_reaches_the_sentiment_service_with_tls_and_a_mounted_token(monkeypatch, tmp_path, pem):
    token = tmp_path / "token"
    token.write_text("monitor-token\n")
    monkeypatch.setenv("NLPSUITE_MONITOR_SENTIMENT_TOKEN_FILE", str(token))
    monkeypatch.setenv("NLPSUITE_MONITOR_SENTIMENT_TLS__CA_FILE", str(pem("ca.pem")))
    s = load_monitor_settings()
    assert s.sentiment_secret().get_secret_value() == "monitor-token" and s.sentiment_tls.ca_file == tmp_path / "ca.pem"
    assert "monitor-token" not in repr(s)


def test_stream_command_reports_a_config_error_and_exits_2(monkeypatch, capsys):
    from nlpsuite.cli import main

    _env(monkeypatch, security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_plain_username="u")
    assert main(["stream", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "sasl_plain_password" in err and "invalid monitor configuration" in err
