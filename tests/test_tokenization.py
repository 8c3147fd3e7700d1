"""The truncation rule: tokenizing only the head of a long text gives exactly the ids of the whole text, cut."""
from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlpsuite.pipeline.build import default_base_checkpoint
from nlpsuite.shared.tokenization import HEAD_CHARS_PER_TOKEN, TextEncoder

ENCODER = TextEncoder(default_base_checkpoint() / "tokenizer.json", max_length=16)

WORDS = st.one_of(
    st.sampled_from(["the", "shares", "fell", "Überraschung", "naïve", "東京", "株価", "한국어", "!!", "a.b", "'s",
                     "\u00a0", "\t", "\n", "x" * 150, "tokenization", "##ing", "[SEP]", "e\u0301"]),
    st.text(min_size=1, max_size=12),
    st.text(alphabet="ab", min_size=90, max_size=140),  # one word over WordPiece's 100 characters: [UNK]
)


def whole_then_cut(encoder: TextEncoder, text: str) -> tuple[list[int], bool]:
    ids = encoder.token_ids([text])[0]
    limit = encoder.max_length
    return (ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:]), len(ids) > limit


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(WORDS, max_size=120), st.sampled_from([" ", "  ", "", "\n", " \t"]))
def test_tokenize_equals_the_whole_text_cut_to_the_limit(words, sep):
    text = sep.join(words)
    tokens = ENCODER.tokenize([text, "short text"])
    assert (tokens.ids[0], tokens.truncated[0]) == whole_then_cut(ENCODER, text)
    assert (tokens.ids[1], tokens.truncated[1]) == whole_then_cut(ENCODER, "short text")
    if tokens.exact[0]:
        assert tokens.counted[0] == len(ENCODER.token_ids([text])[0])


def test_a_long_text_is_read_from_its_head_only():
    encoder = TextEncoder(default_base_checkpoint() / "tokenizer.json", max_length=128)
    text = "shares of the company rose sharply after the quarterly results beat expectations " * 250  # 20,500 chars
    tokens = encoder.tokenize([text] * 50)
    assert tokens.ids[0] == whole_then_cut(encoder, text)[0] and all(tokens.truncated)
    assert not tokens.exact[0] and 128 < tokens.counted[0] < len(encoder.token_ids([text])[0])
    # Read from the head: the work is that of ~128 x HEAD_CHARS_PER_TOKEN characters, not of 20,500.
    started = time.perf_counter()
    encoder.tokenize([text] * 50)
    head_s = time.perf_counter() - started
    started = time.perf_counter()
    encoder.token_ids([text] * 50)
    whole_s = time.perf_counter() - started
    assert len(text) > 10 * 128 * HEAD_CHARS_PER_TOKEN
    assert head_s < whole_s / 3, (head_s, whole_s)


def test_text_without_spaces_falls_back_to_the_whole_text():
    encoder = TextEncoder(default_base_checkpoint() / "tokenizer.json", max_length=16)
    text = "株" * 5000
    tokens = encoder.tokenize([text])
    assert tokens.exact == [True] and tokens.counted == [5002]
    assert tokens.ids[0] == whole_then_cut(encoder, text)[0]
