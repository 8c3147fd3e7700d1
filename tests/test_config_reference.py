"""docs/configuration.md must be exactly what scripts/gen_config_reference.py writes from the settings models."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current(tmp_path):
    out = tmp_path / "configuration.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_reference.py"), str(out)], check=True,
                   cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "NLPSUITE_SENTIMENT__PORT": "1"})
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert out.read_text() == committed, "run `python scripts/gen_config_reference.py` and commit docs/configuration.md"


def test_reference_names_every_setting_with_its_env_variable_and_default():
    text = (ROOT / "docs" / "configuration.md").read_text()
    for line in ("| `sentiment.batch.max_delay_ms` | `NLPSUITE_SENTIMENT__BATCH__MAX_DELAY_MS` | float (≥ 0) | `0.0` |",
                 "| `chat.intent_model.name` | `NLPSUITE_CHAT__INTENT_MODEL__NAME` | string | `intent` |",
                 "| `topic_rule.min_negatives` | `NLPSUITE_MONITOR_TOPIC_RULE__MIN_NEGATIVES` | int | `8` |",
                 "| `kafka.bootstrap_servers` | `NLPSUITE_MONITOR_KAFKA__BOOTSTRAP_SERVERS` | string | `localhost:9092` |"):
        assert line in text
