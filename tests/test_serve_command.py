"""`nlpsuite serve`: a real process, configured by YAML + env, SERVING after warm-up, clean exit on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from nlpsuite.services.sentiment.client import SentimentClient
from nlpsuite.shared.local_run import free_port, wait_serving


def test_serving_modules_do_not_import_torch():
    code = ("import sys; import nlpsuite.cli, nlpsuite.services.sentiment.service, nlpsuite.services.chat.service, "
            "nlpsuite.services.recommend.service, nlpsuite.services.sentiment.client, "
            "nlpsuite.services.chat.client, nlpsuite.services.recommend.client, nlpsuite.shared.server; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_invalid_config_exits_with_a_clear_message(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sentiment:\n  batch:\n    max_batch_size: -1\n")
    proc = subprocess.run([sys.executable, "-m", "nlpsuite.cli", "serve", "sentiment", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "sentiment.batch.max_batch_size" in proc.stderr


def test_serve_sentiment_process(tmp_path, built_classifier):
    port, metrics_port = free_port(), free_port()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"sentiment:\n  host: 127.0.0.1\n  port: {port}\n  model:\n    name: {built_classifier.manifest.name}\n"
                   f"    repository: {built_classifier.path.parent.parent}\n")
    env = {**os.environ, "NLPSUITE_SENTIMENT__METRICS_PORT": str(metrics_port)}
    proc = subprocess.Popen([sys.executable, "-m", "nlpsuite.cli", "serve", "sentiment", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_serving(f"127.0.0.1:{port}", "nlpsuite.v1.SentimentService", timeout_s=60)
        with SentimentClient(f"127.0.0.1:{port}") as c:
            assert c.analyze(["Norvale Mining shares jump"]).results[0].entities[0].ticker == "NVM"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in logs]
    assert "serving" in messages and "shutting down" in messages and "stopped" in messages
    ready = next(e for e in logs if e["msg"] == "model ready")
    assert ready["variant"] == "int8" and ready["provider"] == "CPUExecutionProvider"
    assert "Norvale Mining shares jump" not in err  # customer text is not logged


def test_serve_all_builds_the_three_services_on_their_own_ports():
    from nlpsuite.cli import make_services
    from nlpsuite.shared.config import load_settings

    services = make_services(["sentiment", "chat", "recommend"], load_settings())
    assert [s.service_name for s in services] == ["nlpsuite.v1.SentimentService", "nlpsuite.v1.ChatService",
                                                  "nlpsuite.v1.RecommendService"]
    assert len({s.settings.port for s in services}) == 3
