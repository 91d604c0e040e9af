"""The shipped tokenizer ``vq-fashion``: it loads offline by name, and its model card's numbers hold.

The card has two evaluations: the full one (the first 1000 Fashion-MNIST test images, with rFID and
PRDC) and a quick check (the first 64 test images, no Inception features). The 64 images are kept
in tests/data/fashion-mnist-test64 (cut from the Debian package, MIT), so this runs without the
package: the test reproduces the quick check with ``tokenkit.eval.evaluate`` through the same
Fashion-MNIST reader, and checks that those 64 images agree with the 1000-image numbers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import huggingface_hub
import pytest
import torch

import tokenkit
from tokenkit import hub
from tokenkit.data import build_dataset
from tokenkit.eval import evaluate
from tokenkit.metrics import psnr, ssim
from tokenkit.model_card import read_eval_results
from tokenkit.train.config import load_config

NAME = "vq-fashion"
REPO_ROOT = Path(__file__).resolve().parents[1]
FOLDER = REPO_ROOT / "tokenkit" / "pretrained" / NAME
TEST64 = Path(__file__).parent / "data" / "fashion-mnist-test64"
CHECK_BLOCK = re.compile(r"<!-- tokenkit-eval-json-check -->\n```json\n(.*?)\n```", re.DOTALL)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The card's numbers were measured on one thread (the same reduction order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def card() -> str:
    return (FOLDER / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tok():
    return tokenkit.load(NAME)


@pytest.fixture(scope="module")
def test64():
    """The 64 test images through the library's own Fashion-MNIST reader."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENKIT_FASHION_MNIST", str(TEST64))
        dataset = build_dataset({"name": "fashion-mnist"}, "test")
    return torch.stack([dataset[i] for i in range(len(dataset))])


@pytest.fixture(scope="module")
def quick_check(tok):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENKIT_FASHION_MNIST", str(TEST64))
        return evaluate(tok, {"name": "fashion-mnist"}, "test", num_items=64, features=False, progress=False)


def test_registered_pinned_and_small():
    entry = hub.pretrained_entry(NAME)
    assert NAME in tokenkit.list_pretrained()
    assert entry.modality == "image"
    assert Path(entry.path) == FOLDER
    assert entry.sha256 == hub.weights_sha256(FOLDER)
    assert (REPO_ROOT / entry.recipe).is_file()
    assert (FOLDER / "model.safetensors").stat().st_size < 5 * 2**20


def test_loads_by_name_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a shipped tokenizer must not touch the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    tok = tokenkit.load(NAME)
    assert type(tok).__name__ == "ImageTokenizer" and not tok.training
    assert tok.config_dict()["quantizer"] == "ema" and tok.codebook_size == 512


def test_recipe_is_the_shipped_config():
    """configs/fashion-mnist-vq.toml [model] is what config.json holds (it made these weights)."""
    model = load_config(REPO_ROOT / hub.pretrained_entry(NAME).recipe).model
    config = json.loads((FOLDER / "config.json").read_text())
    for key, value in model.items():
        if isinstance(value, dict):
            assert {k: config[key][k] for k in value} == value, key
        else:
            assert config[key] == value, key


def test_card_records_the_full_protocol(card):
    full = read_eval_results(card)
    protocol = full["protocol"]
    assert protocol["dataset"] == "fashion-mnist" and protocol["split"] == "test"
    assert protocol["num_items"] == 1000
    assert len(protocol["feature_network"]["sha256"]) == 64
    assert protocol["tokenizer"] == json.loads((FOLDER / "config.json").read_text())
    metrics = full["metrics"]
    for key in ("psnr", "ssim", "rfid", "precision", "recall", "density", "coverage", "cvu"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["tokens_per_image"] == 49 and metrics["bits_per_token"] == 9.0
    assert f"| psnr | {metrics['psnr']:.4g} |" in card  # the table shows the JSON's numbers


def test_quick_check_is_reproduced(card, quick_check):
    expected = json.loads(CHECK_BLOCK.search(card).group(1))
    assert expected["protocol"]["num_items"] == quick_check["protocol"]["num_items"] == 64
    assert expected["protocol"]["split"] == "test"
    got, want = quick_check["metrics"], expected["metrics"]
    assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-3)
    assert got["ssim"] == pytest.approx(want["ssim"], abs=1e-4)
    # tokens come from an argmin: identical unless a latent sits on a tie between two codes
    for key in ("cvu", "perplexity", "codes_used_fraction", "distinct_codes_per_image"):
        assert got[key] == pytest.approx(want[key], rel=1e-2), key
    assert got["tokens_per_image"] == want["tokens_per_image"] == 49


def test_quick_check_agrees_with_the_full_test_set(card, tok, test64):
    """The 64 images' mean PSNR/SSIM lie within 4 standard errors of the 1000-image means."""
    full = read_eval_results(card)["metrics"]
    with torch.inference_mode():
        x_hat = tok.decode(tok.encode(test64)).clamp(-1, 1)
    for name, metric in (("psnr", psnr), ("ssim", ssim)):
        per_image = metric(test64, x_hat, reduction="none").double()
        stderr = float(per_image.std()) / math.sqrt(len(per_image))
        assert abs(float(per_image.mean()) - full[name]) < 4 * stderr, name


def test_tokens_and_reconstructions(tok, test64):
    with torch.inference_mode():
        tokens = tok.encode(test64)
        one_by_one = torch.cat([tok.encode(x[None]) for x in test64[:8]])
        x_hat = tok.decode(tokens)
    assert tokens.shape == (64, 7, 7) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 512
    assert torch.equal(one_by_one, tokens[:8])
    assert x_hat.shape == test64.shape and torch.isfinite(x_hat).all()
    # a real reconstruction: much closer to its own image than to another test image
    own = (x_hat - test64).abs().mean(dim=(1, 2, 3))
    other = (x_hat - test64.roll(1, dims=0)).abs().mean(dim=(1, 2, 3))
    assert (own < other).all()
