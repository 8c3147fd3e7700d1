"""Provider choice and tokenization, the serving-side pieces of the pipeline's output."""
from __future__ import annotations

import os

import numpy as np
import pytest

from nlpsuite.shared.model import open_model
from nlpsuite.shared.runtime import available_cores, create_session, expected_provider, probe_provider
from nlpsuite.shared.tokenization import TextEncoder, TextTooLongError


def test_provider_is_what_the_session_really_runs_on(built_classifier):
    path = built_classifier.variant_path("int8")
    runtime = create_session(path, "auto")
    assert runtime.provider == runtime.session.get_providers()[0]
    assert runtime.provider == expected_provider("auto")
    if not probe_provider("cuda"):
        assert runtime.provider == "CPUExecutionProvider" and not runtime.on_gpu


def test_forcing_a_missing_gpu_fails_loudly(built_classifier):
    if probe_provider("cuda"):
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no execution provider could open"):
        create_session(built_classifier.variant_path("fp32"), "cuda")


def test_truncation_is_flagged_and_keeps_the_final_separator(built_classifier):
    encoder = TextEncoder(built_classifier.tokenizer_path, max_length=8)
    sep = encoder.tokenizer.token_to_id("[SEP]")
    enc = encoder.encode(["short", "this sentence is clearly much longer than eight tokens in total"])
    assert enc.truncated.tolist() == [False, True]
    assert enc.input_ids.shape == (2, 8)
    assert enc.input_ids[1, -1] == sep
    assert enc.attention_mask[0].sum() == enc.lengths[0] < 8
    with pytest.raises(TextTooLongError, match="texts\\[1\\] has \\d+ tokens, over the limit of 8"):
        encoder.encode(["short", "this sentence is clearly much longer than eight tokens in total"], reject_overlong=True)


def test_the_solo_session_has_more_threads_and_the_same_results(built_classifier):
    if probe_provider("cuda"):
        pytest.skip("the solo session is for the CPU")
    texts = ["shares rose after the results", "the company cut its forecast", "a flat quarter"]
    model = open_model(built_classifier, provider="cpu", intra_threads=1, solo_threads=2)
    assert model.solo is not None
    assert model.solo.session.get_session_options().intra_op_num_threads == 2
    assert model.runtime.session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(model.predict(texts, alone=True), model.predict(texts), rtol=1e-4, atol=1e-5)
    assert open_model(built_classifier, provider="cpu", intra_threads=1, solo_threads=1).solo is None
    assert open_model(built_classifier, provider="cpu", intra_threads=0, solo_threads=4).solo is None
    default = open_model(built_classifier, provider="cpu", intra_threads=1, solo_threads=None)
    assert (default.solo is not None) == (available_cores() > 1)


def test_available_cores_follow_a_cgroup_cpu_limit(monkeypatch):
    from nlpsuite.shared import runtime

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: None)
    assert runtime.available_cores() == cores
    assert runtime.owned_cores() == sorted(os.sched_getaffinity(0))
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: 0.5)
    assert runtime.available_cores() == 1
    if cores > 1:
        assert runtime.owned_cores() is None  # under a limit below the mask, nothing is pinned
