"""`nlpsuite demo` end to end (slow), and its process handling and example inputs (fast).

The slow test runs the real demo in a subprocess against a temporary model repository linking the models
this session already has (`sentiment_repository`: NLPSUITE_TEST_MODELS, or the sentiment model built for the
monitor tests); the demo builds the missing defaults from the shipped examples (minutes on 2 cores).
"""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from nlpsuite.demo import (CHAT_MESSAGES, EXAMPLES, HEADLINES, MODELS, Children, keep_running_help,
                           reader_example, serve_env)
from nlpsuite.services.chat.routing import KNOWLEDGE_LABEL


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (our own processes are readable)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_stop_ends_the_whole_process_group(tmp_path):
    marker = f"DEMO_TEST_{uuid.uuid4().hex}=1"
    key = marker.split("=")[0]
    children = Children(tmp_path)
    children.start("sleeper", ["bash", "-c", "sleep 300 & sleep 300 & wait"], {key: "1"})
    deadline = time.monotonic() + 10
    while len(processes_with(marker)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes_with(marker)) == 3  # bash and its two sleeps
    t0 = time.monotonic()
    assert children.stop("sleeper", timeout_s=5) == -15  # SIGTERM reached bash
    assert time.monotonic() - t0 < 5
    time.sleep(0.2)
    assert processes_with(marker) == []  # and the grandchildren


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path):
    children = Children(tmp_path)
    proc = children.start("stubborn", ["bash", "-c", "trap '' TERM; sleep 300"], {})
    time.sleep(0.3)
    assert children.stop("stubborn", timeout_s=1) is None
    assert proc.returncode == -9


def test_example_inputs_come_from_the_shipped_data():
    history, candidates = reader_example()
    assert len(history) == 4 and len(candidates) == 10
    assert len({c[0] for c in candidates}) == 10
    assert not {h for h, _ in history} & {text for _, text in candidates}
    assert sum("Corvane" in text for _, text in candidates) == 2


def test_keep_running_help_names_the_commands_and_env():
    text = keep_running_help(Path("/srv/models"))
    for command in ("nlpsuite broker --port 9092", "nlpsuite serve all", "nlpsuite stream --local-broker",
                    "nlpsuite produce --local-broker", "nlpsuite demo --keep-running"):
        assert command in text
    assert "NLPSUITE_SENTIMENT__MODEL__REPOSITORY=/srv/models" in text
    assert "NLPSUITE_RECOMMEND__RANKER=null" in text  # no recommender there: text match only
    env = serve_env(Path("models"), {"chat": 1234})
    assert env["NLPSUITE_CHAT__PORT"] == "1234" and env["NLPSUITE_CHAT__HOST"] == "127.0.0.1"
    assert not any(k.endswith("__REPOSITORY") for k in env)  # `models` is the configured default


@pytest.fixture(scope="module")
def repository(sentiment_repository, tmp_path_factory) -> Path:
    """A fresh repository linking the models already built this session (the monitor tests' sentiment, or
    all of NLPSUITE_TEST_MODELS); the demo builds the rest."""
    repo = tmp_path_factory.mktemp("demo-models")
    for name in MODELS:
        if (sentiment_repository / name).is_dir():
            (repo / name).symlink_to((sentiment_repository / name).resolve())
    return repo


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_demo_end_to_end(repository, tmp_path):
    marker = f"DEMO_TEST_{uuid.uuid4().hex}=1"
    key, value = marker.split("=")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "nlpsuite.cli", "demo", "--repository", str(repository)],
                          cwd=tmp_path, env=os.environ | {key: value}, capture_output=True, text=True, timeout=2300)
    elapsed = time.monotonic() - t0
    out = proc.stdout
    print(out, proc.stderr[-3000:], f"demo took {elapsed:.0f} s", sep="\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert processes_with(marker) == []  # no broker, service or monitor left behind
    assert all((repository / name).is_dir() for name in MODELS)

    # the planted surge: one alert, for Marrowind Chemicals, with its headlines
    assert "monitor: 1 alert(s)" in out
    assert re.search(r"ALERT (LOW|MEDIUM|HIGH): Marrowind Chemicals \(entity MWCH\)", out)
    window = re.search(r"window 2026-03-02 (\d\d:\d\d)-\d\d:\d\d UTC: (\d+) negative of (\d+)", out)
    assert window and "11:00" <= window[1] <= "11:55" and int(window[2]) >= 5
    assert out.count("negative 0.") + out.count("negative 1.") >= 3

    # chat: each message answered from where it should be: an intent, a document, the FAQ, or a hand-off
    intents = {row["intent"] for row in csv.DictReader(open(EXAMPLES / "intents.csv"))} | {KNOWLEDGE_LABEL}
    replies = re.findall(r"> (.+)\n    intent (\S+) \((\d\.\d\d)\), source (intent|faq|document|handoff)"
                         r"( \S+ \(retrieval \d\.\d\d\))?, handoff (yes \(\w+\)|no)\n    answer: (.+)", out)
    assert [r[0] for r in replies] == CHAT_MESSAGES
    assert all(r[1] in intents and r[6].strip() for r in replies)
    got = [(r[3], r[4].split(" (")[0].strip(), r[5]) for r in replies]
    assert got == [("intent", "", "no"), ("document", "branches#saturday-opening", "no"), ("faq", "faq-002", "no"),
                   ("handoff", "", "yes (out_of_scope)"), ("handoff", "", "yes (customer_asked)")], got
    assert replies[0][1] == "card_lost"

    # sentiment: every headline labelled; watchlist entities found
    labels = re.findall(r"^  (negative|neutral|positive) +(\d\.\d\d)  (.+)$", out, re.M)
    assert [text for _, _, text in labels] == HEADLINES
    assert "entities: Marrowind Chemicals (MWCH)" in out and "entities: Quillon Bank (QLNB)" in out

    # recommend: all ten candidates ranked, scores non-increasing
    ranked = re.findall(r"^ +(\d+)\. score ([+-]\d\.\d+) \(text match", out, re.M)
    assert [int(r) for r, _ in ranked] == list(range(1, 11))
    scores = [float(s) for _, s in ranked]
    assert scores == sorted(scores, reverse=True)

    # clean stop, the total, and how to keep it running
    assert "stopped: stream exit 0, serve exit 0, broker" in out
    assert re.search(r"total \d+\.\d s", out)
    assert "nlpsuite serve all" in out and "nlpsuite demo --keep-running" in out
