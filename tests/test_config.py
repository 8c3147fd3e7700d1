"""Serving configuration: defaults, YAML file, environment overrides, and clear errors."""
from __future__ import annotations

import pytest

from nlpsuite.shared.config import ConfigError, load_settings


def test_defaults_give_each_service_its_own_port():
    s = load_settings()
    assert len({s.sentiment.port, s.chat.port, s.recommend.port}) == 3
    assert s.sentiment.model.name == "sentiment" and s.chat.intent_model.name == "intent"


def test_yaml_file_then_env_overrides(tmp_path, monkeypatch):
    path = tmp_path / "serve.yaml"
    path.write_text("sentiment:\n  port: 6001\n  max_tokens: 64\n  batch:\n    max_batch_size: 8\n"
                    "  model:\n    name: finbert\n    repository: /models\n")
    monkeypatch.setenv("NLPSUITE_SENTIMENT__BATCH__MAX_DELAY_MS", "7.5")
    monkeypatch.setenv("NLPSUITE_SENTIMENT__PORT", "6002")
    s = load_settings(path)
    assert s.sentiment.port == 6002  # env beats the file
    assert s.sentiment.max_tokens == 64 and s.sentiment.batch.max_batch_size == 8
    assert s.sentiment.batch.max_delay_ms == 7.5
    assert s.sentiment.model.name == "finbert" and str(s.sentiment.model.repository) == "/models"


def test_config_path_from_env(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("chat:\n  context_turns: 3\n")
    monkeypatch.setenv("NLPSUITE_CONFIG", str(path))
    assert load_settings().chat.context_turns == 3


@pytest.mark.parametrize("text, needle", [
    ("sentiment:\n  batch:\n    max_batch_size: 0\n", "sentiment.batch.max_batch_size"),
    ("sentiment:\n  prot: 1\n", "sentiment.prot"),
    ("chat:\n  port: 50051\n", "chat.port 50051 is also sentiment.port"),
    ("sentiment: [unclosed\n", "invalid configuration file"),
])
def test_invalid_config_is_rejected_with_a_clear_message(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert needle in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_bad_env_value_names_the_variable_path(monkeypatch):
    monkeypatch.setenv("NLPSUITE_RECOMMEND__CACHE_SIZE", "lots")
    with pytest.raises(ConfigError, match="recommend.cache_size"):
        load_settings()


def test_a_partial_model_section_keeps_the_default_model_name(tmp_path, monkeypatch):
    monkeypatch.setenv("NLPSUITE_SENTIMENT__MODEL__REPOSITORY", "/srv/models")
    monkeypatch.setenv("NLPSUITE_CHAT__EMBEDDER__VARIANT", "fp32")
    path = tmp_path / "serve.yaml"
    path.write_text("recommend:\n  embedder:\n    provider: cpu\n")
    s = load_settings(path)
    assert s.sentiment.model.name == "sentiment" and str(s.sentiment.model.repository) == "/srv/models"
    assert s.chat.embedder.name == "embedder" and s.chat.embedder.variant == "fp32"
    assert s.chat.intent_model.name == "intent"
    assert s.recommend.embedder.name == "embedder" and s.recommend.embedder.provider == "cpu"
    assert s.recommend.ranker is not None and s.recommend.ranker.name == "recommender"


def test_the_ranker_can_be_switched_off_from_env(monkeypatch):
    monkeypatch.setenv("NLPSUITE_RECOMMEND__RANKER", "null")
    assert load_settings().recommend.ranker is None
