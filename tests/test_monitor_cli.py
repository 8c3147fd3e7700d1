"""`nlpsuite broker` and `nlpsuite produce` as a user runs them (real Tansu on loopback)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from nlpsuite.shared.local_run import free_port
from nlpsuite.services.monitor.local_replay import read_topic
from tests.support import ROOT

pytestmark = pytest.mark.timeout(120)


def test_broker_creates_topics_produce_replays_the_file_and_sigterm_stops_it(tmp_path):
    port = free_port()
    broker = subprocess.Popen([sys.executable, "-m", "nlpsuite.cli", "broker", "--port", str(port),
                               "--topics", "cli.news,cli.alerts", "--partitions", "2"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = broker.stdout.readline()
        assert f"127.0.0.1:{port}" in line and "memory" in line, line
        lines = [json.dumps({"id": f"x-{i}", "headline": "h", "source": "s",
                             "published_at": "2026-03-02T09:00:00Z"}) for i in range(25)]
        path = tmp_path / "n.jsonl"
        path.write_text("\n".join(lines) + "\n\n")
        out = subprocess.run([sys.executable, "-m", "nlpsuite.cli", "produce", "--file", str(path), "--rate", "200",
                              "--bootstrap-servers", f"127.0.0.1:{port}", "--topic", "cli.news"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "sent 25 messages to cli.news" in out.stdout
        records = read_topic(f"127.0.0.1:{port}", "cli.news", min_count=25)
        assert sorted(r.value.decode() for r in records) == sorted(lines)
        assert {r.key.decode() for r in records} == {f"x-{i}" for i in range(25)}
    finally:
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(30) == 0
