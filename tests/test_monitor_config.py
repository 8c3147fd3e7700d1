"""Monitor configuration: env prefix, production-safe Kafka defaults, TLS/SASL, the local-broker profile."""
from __future__ import annotations

import pytest

from nlpsuite.services.monitor.config import KafkaSettings, MonitorSettings


def test_env_configures_kafka_tls_sasl_topics_and_rules(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {
        "NLPSUITE_MONITOR_KAFKA__BOOTSTRAP_SERVERS": "k1:9093, k2:9093",
        "NLPSUITE_MONITOR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "NLPSUITE_MONITOR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "NLPSUITE_MONITOR_KAFKA__SASL_PLAIN_USERNAME": "monitor",
        "NLPSUITE_MONITOR_KAFKA__SASL_PLAIN_PASSWORD": "s3cret",
        "NLPSUITE_MONITOR_KAFKA__SSL_CAFILE": str(ca),
        "NLPSUITE_MONITOR_TOPICS__NEWS": "prod.news",
        "NLPSUITE_MONITOR_ENTITY_RULE__MIN_NEGATIVES": "7",
        "NLPSUITE_MONITOR_WINDOWS__LENGTH_S": "3600",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = MonitorSettings()
    c = s.kafka.consumer("grp")
    assert c["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert (c["security_protocol"], c["sasl_mechanism"], c["sasl_plain_username"], c["sasl_plain_password"]) == \
        ("SASL_SSL", "SCRAM-SHA-512", "monitor", "s3cret")
    assert c["ssl_cafile"] == str(ca)
    assert c["enable_auto_commit"] is False and c["allow_auto_create_topics"] is False
    assert s.topics.news == "prod.news" and s.entity_rule.min_negatives == 7 and s.windows.length_s == 3600
    assert "s3cret" not in repr(s)


def test_defaults_are_production_safe_and_the_local_profile_only_tunes_timing():
    k = KafkaSettings()
    assert k.session_timeout_ms >= 6000 and k.producer()["acks"] == "all"
    local = k.local()
    assert local.session_timeout_ms < 6000 and local.bootstrap_servers == k.bootstrap_servers
    assert "sasl_mechanism" not in k.common() and "ssl_cafile" not in k.common()


def test_bad_window_settings_are_refused(monkeypatch):
    monkeypatch.setenv("NLPSUITE_MONITOR_WINDOWS__SLIDE_S", "700")
    with pytest.raises(ValueError):
        MonitorSettings()
