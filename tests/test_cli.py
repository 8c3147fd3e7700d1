"""`nlpsuite build` and `nlpsuite evaluate` as a user runs them: clear errors, exit codes, the JSON last line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nlpsuite.cli import main
from nlpsuite.shared.model_repo import ModelRepository


def _build_args(data: Path, repo: Path, base: Path, *extra: str) -> list[str]:
    return ["build", "--task", "classify", "--name", "m", "--data", str(data), "--repository", str(repo),
            "--base", str(base), "--max-steps", "2", "--no-progress", *extra]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_INPUTS = {
    "missing column": ("sentence,label\nhello,a\nworld,b\n", [], "missing column(s) 'text'"),
    "single label": ("text,label\nhello,a\nworld,a\nagain,a\n", [], "at least 2 distinct labels"),
    "empty data": ("text,label\n", [], "no rows"),
    "empty label": ("text,label\nhello,a\nworld,\n", [], "row 3: empty 'label'"),
    "unknown dev label": ("text,label\nhello,a\nworld,b\n", ["--dev", "DEV"], "labels not in the training data: c"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_data_is_a_clear_error_and_publishes_nothing(case, tmp_path, tiny_checkpoint, capsys):
    content, extra, message = BAD_INPUTS[case]
    data = _write(tmp_path / "train.csv", content)
    dev = _write(tmp_path / "dev.csv", "text,label\nhi,c\n")
    extra = [str(dev) if e == "DEV" else e for e in extra]
    assert main(_build_args(data, tmp_path / "repo", tiny_checkpoint, *extra)) == 2
    assert message in capsys.readouterr().err
    assert ModelRepository(tmp_path / "repo").versions("m") == []


def test_unreadable_files_are_clear_errors(tmp_path, tiny_checkpoint, capsys):
    assert main(_build_args(tmp_path / "nope.csv", tmp_path / "repo", tiny_checkpoint)) == 2
    assert "no such file" in capsys.readouterr().err
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    assert main(_build_args(binary, tmp_path / "repo", tiny_checkpoint)) == 2
    assert "unreadable" in capsys.readouterr().err
    bad_jsonl = _write(tmp_path / "bad.jsonl", '{"text": "a", "label": "x"}\nnot json\n')
    assert main(_build_args(bad_jsonl, tmp_path / "repo", tiny_checkpoint)) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err


def test_a_checkpoint_that_is_not_bert_family_is_refused(tmp_path, sentiment_csv, capsys):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    assert main(_build_args(sentiment_csv, tmp_path / "repo", not_a_model)) == 2
    assert "has no config.json" in capsys.readouterr().err
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(_build_args(sentiment_csv, tmp_path / "repo", gpt)) == 2
    assert "is a 'gpt2' model" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists() or ModelRepository(tmp_path / "repo").versions("m") == []


def test_jsonl_data_with_custom_columns_builds(tmp_path, tiny_checkpoint, capsys):
    rows = [{"body": f"text number {i} {'good' if i % 2 else 'bad'}", "tag": "pos" if i % 2 else "neg"} for i in range(40)]
    data = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows))
    args = _build_args(data, tmp_path / "repo", tiny_checkpoint, "--text-col", "body", "--label-col", "tag",
                       "--variants", "fp32,int8")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "published m version 1" in out
    # The build ends with its accuracy / speed table (fp32 and int8 rows, the host's ISA in the header).
    table = out[out.index("front\n"):].splitlines()[1:]
    assert [line.split()[:2] for line in table] == [["m", "(this"], ["m", "(this"]]
    assert [line.split()[3] for line in table] == ["fp32", "int8"]
    assert ModelRepository(tmp_path / "repo").resolve("m").manifest.labels == ["neg", "pos"]


def test_evaluate_prints_a_table_then_json_last(built_classifier, sentiment_csv):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-m", "nlpsuite.cli", "evaluate", "--model", str(built_classifier.path.parent),
         "--data", str(sentiment_csv), "--variant", "int8"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.strip().splitlines()
    assert out[0].startswith("model tiny v1")
    summary = json.loads(out[-1])
    assert summary["variant"] == "int8" and summary["n"] == 120
    assert 0.0 <= summary["accuracy"] <= 1.0 and 0.0 <= summary["macro_f1"] <= 1.0
    assert summary["ms_per_example"] > 0


def test_evaluate_rejects_labels_the_model_does_not_know(built_classifier, tmp_path, capsys):
    data = _write(tmp_path / "d.csv", "sentence,label\nhello,angry\n")
    assert main(["evaluate", "--model", str(built_classifier.path), "--data", str(data), "--text-col", "sentence"]) == 2
    assert "labels the model does not know: angry" in capsys.readouterr().err


def test_a_build_prints_our_lines_not_the_libraries_notices(tmp_path, tiny_checkpoint, sentiment_csv):
    """transformers' load report and weight-loading bars and the ONNX exporter's tracer warnings stay out of a
    build's output (they said nothing a user could act on); our progress lines and results stay."""
    out = subprocess.run([sys.executable, "-m", "nlpsuite.cli", *_build_args(sentiment_csv, tmp_path / "repo",
                                                                             tiny_checkpoint, "--variants", "fp32")],
                         capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "published m version 1" in out.stdout
    for noise in ("LOAD REPORT", "Loading weights", "TracerWarning", "aten::index", "Writing model shards"):
        assert noise not in out.stdout + out.stderr, noise
