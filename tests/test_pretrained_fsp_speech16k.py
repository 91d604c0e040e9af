"""The shipped audio tokenizer ``fsp-speech16k``: its card, and its quick check reproduced.

Its card holds the evaluation on the 5 held-out LibriVox clips of Debian ``pocketsphinx-testdata``
(PESQ-WB, STOI, code usage, bitrate) and a quick check on 2 of them, kept in
tests/data/librivox-test2 (so this runs where the Debian package is not installed): the test
evaluates the shipped tokenizer on those 2 clips with ``tokenkit.eval.evaluate`` and compares.
Its registry entry, offline loading and recipe are checked with every shipped tokenizer in
test_pretrained.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_pretrained import CHECK_BLOCK, folder_of

import tokenkit
from tokenkit.eval import evaluate
from tokenkit.model_card import read_eval_results

NAME = "fsp-speech16k"
FOLDER = folder_of(NAME)
TEST2 = Path(__file__).parent / "data" / "librivox-test2"
HOP, K = 40, 4096


@pytest.fixture(scope="module")
def card() -> str:
    return (FOLDER / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tok():
    return tokenkit.load(NAME)


def test_card_records_the_librivox_evaluation(card):
    full = read_eval_results(card)
    protocol, metrics = full["protocol"], full["metrics"]
    assert protocol["dataset"] == "librivox-test" and protocol["split"] == "test"
    assert protocol["num_items"] == 5 and protocol["sample_rate"] == 16000
    assert protocol["tokenizer"] == json.loads((FOLDER / "config.json").read_text())
    for key in ("pesq_wb", "stoi", "cvu", "perplexity"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["pesq_clips_scored"] == metrics["clips"] == 5
    assert metrics["tokens_per_second"] == 16000 / HOP and metrics["bits_per_token"] == 12.0
    assert metrics["bitrate_bps"] == pytest.approx(4800.0)
    assert f"| pesq_wb | {metrics['pesq_wb']:.4g} |" in card


def test_quick_check_is_reproduced(card, tok, one_thread):
    expected = json.loads(CHECK_BLOCK.search(card).group(1))
    got = evaluate(tok, {"name": "librivox-test", "root": str(TEST2)}, "test", progress=False)
    assert expected["protocol"]["num_items"] == got["protocol"]["num_items"] == 2
    want, got = expected["metrics"], got["metrics"]
    # the same clips through the same weights: only float summation order may differ
    assert got["pesq_wb"] == pytest.approx(want["pesq_wb"], abs=0.02)
    assert got["stoi"] == pytest.approx(want["stoi"], abs=0.005)
    for key in ("cvu", "perplexity", "distinct_codes_per_clip"):
        assert got[key] == pytest.approx(want[key], rel=2e-2), key
    assert got["seconds"] == want["seconds"] and got["bitrate_bps"] == pytest.approx(4800.0)


def test_tokens_per_second_and_lengths(tok, one_thread):
    torch.manual_seed(0)
    speechlike = torch.randn(2, 1, 16000) * 0.1
    with torch.inference_mode():
        tokens = tok.encode(speechlike)
        audio = tok.decode(tokens)
    assert tokens.shape == (2, 16000 // HOP) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < K
    assert audio.shape == (2, 1, 16000) and torch.isfinite(audio).all()
