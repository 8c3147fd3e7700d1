"""A broken model version fails start-up with a message naming the file and the problem: in-process
(GrpcServer.wait_ready raises ModelRepoError) and as `nlpsuite serve` (non-zero exit, the message on stderr)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from nlpsuite.services.sentiment.service import SentimentService
from nlpsuite.shared.config import ModelSettings, SentimentSettings
from nlpsuite.shared.model_repo import ModelRepoError
from nlpsuite.shared.local_run import ServerThread


def truncate(version_dir):
    onnx = version_dir / "model.int8.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 3])


def edit_manifest(**changes):
    def edit(version_dir):
        path = version_dir / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest.update({k: v(manifest) if callable(v) else v for k, v in changes.items()})
        path.write_text(json.dumps(manifest))
    return edit


FAULTS = {
    "missing model file": (lambda d: (d / "model.int8.onnx").unlink(), ["model.int8.onnx", "missing"]),
    "truncated model file": (truncate, ["model.int8.onnx"]),
    "labels do not match the output": (edit_manifest(labels=lambda m: m["labels"] + ["extra"]),
                                       ["manifest.json lists 4 labels", "outputs 3 scores"]),
    "missing tokenizer": (lambda d: (d / "tokenizer.json").unlink(), ["tokenizer.json", "missing"]),
    "corrupt tokenizer": (lambda d: (d / "tokenizer.json").write_text("{not json"), ["tokenizer.json", "not a valid"]),
    "wrong task": (edit_manifest(task="embed"), ["task 'embed'", "needs a 'classify' model"]),
    "no labels": (edit_manifest(labels=[]), ["no labels"]),
}


def broken_repository(tmp_path, built_classifier, fault: str):
    repo = tmp_path / "models"
    version_dir = repo / "sentiment" / "1"
    shutil.copytree(built_classifier.path, version_dir)
    edit = FAULTS[fault][0]
    edit(version_dir)
    return repo, version_dir


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_broken_model_fails_start_up_with_a_clear_error(tmp_path, built_classifier, fault):
    repo, version_dir = broken_repository(tmp_path, built_classifier, fault)
    settings = SentimentSettings(host="127.0.0.1", port=0, model=ModelSettings(name="sentiment", repository=repo))
    srv = ServerThread(SentimentService(settings))
    try:
        with pytest.raises(ModelRepoError) as err:
            srv.start()
    finally:
        srv.stop()
    message = str(err.value)
    assert str(version_dir) in message
    for needle in FAULTS[fault][1]:
        assert needle in message, message


@pytest.mark.parametrize("fault", ["truncated model file", "labels do not match the output"])
def test_serve_exits_non_zero_naming_the_file_and_the_problem(tmp_path, built_classifier, fault):
    repo, version_dir = broken_repository(tmp_path, built_classifier, fault)
    env_cfg = tmp_path / "serve.yaml"
    env_cfg.write_text(f"sentiment:\n  host: 127.0.0.1\n  port: 0\n  model:\n    name: sentiment\n"
                       f"    repository: {repo}\n")
    proc = subprocess.run([sys.executable, "-m", "nlpsuite.cli", "serve", "sentiment", "--config", str(env_cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("nlpsuite serve: error:") and str(version_dir) in error, proc.stderr[-2000:]
    for needle in FAULTS[fault][1]:
        assert needle in error, error
