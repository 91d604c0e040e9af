"""Every shipped tokenizer: it loads offline by name and pinned; every image tokenizer's card numbers hold.

Each card has two evaluations: the full one (the first 1000 Fashion-MNIST test images, with rFID
and PRDC) and a quick check (the first 64 test images, no Inception features). The 64 images are
kept in tests/data/fashion-mnist-test64 (cut from the Debian package, MIT), so this runs without
the package: the test reproduces the quick check with ``tokenkit.eval.evaluate`` through the same
Fashion-MNIST reader, and checks that those 64 images agree with the 1000-image numbers.
What is particular to one tokenizer lives in ``test_pretrained_<name>.py``; there the audio
tokenizers also check their card against their own evaluation set.
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
from tokenkit.eval import evaluate
from tokenkit.metrics import psnr, ssim
from tokenkit.model_card import read_eval_results
from tokenkit.train.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST64 = Path(__file__).parent / "data" / "fashion-mnist-test64"
CHECK_BLOCK = re.compile(r"<!-- tokenkit-eval-json-check -->\n```json\n(.*?)\n```", re.DOTALL)

# name -> what its files must hold (tokens: per image; audio tokenizers are checked in their own file)
SHIPPED = {
    "vq-fashion": dict(architecture="ImageTokenizer", quantizer="ema", K=512, tokens=49, max_mb=5),
    "pivq-fashion": dict(architecture="PIVQTokenizer", quantizer="matching", K=512, tokens=32, max_mb=8),
    "fsp-fashion": dict(architecture="ImageTokenizer", quantizer="fsp", K=512, tokens=49, max_mb=5),
    "fsp-speech16k": dict(architecture="AudioTokenizer", quantizer="fsp", K=4096, modality="audio", max_mb=4),
}
IMAGES = sorted(n for n, want in SHIPPED.items() if want.get("modality", "image") == "image")


def folder_of(name: str) -> Path:
    return REPO_ROOT / "tokenkit" / "pretrained" / name


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module", params=IMAGES)
def image_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def card(image_name) -> str:
    return (folder_of(image_name) / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tok(image_name):
    return tokenkit.load(image_name)


@pytest.fixture(scope="module")
def quick_check(tok, one_thread):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENKIT_FASHION_MNIST", str(TEST64))
        return evaluate(tok, {"name": "fashion-mnist"}, "test", num_items=64, features=False, progress=False)


def test_every_shipped_folder_is_tested():
    folders = (REPO_ROOT / "tokenkit" / "pretrained").iterdir()
    assert {p.name for p in folders if p.is_dir() and p.name != "__pycache__"} == set(SHIPPED)
    for name in SHIPPED:
        assert (Path(__file__).parent / f"test_pretrained_{name.replace('-', '_')}.py").is_file(), name


def test_registered_pinned_and_small(name):
    entry, folder = hub.pretrained_entry(name), folder_of(name)
    assert name in tokenkit.list_pretrained()
    assert entry.modality == SHIPPED[name].get("modality", "image")
    assert Path(entry.path) == folder
    assert entry.sha256 == hub.weights_sha256(folder)
    assert (REPO_ROOT / entry.recipe).is_file()
    assert (folder / "model.safetensors").stat().st_size < SHIPPED[name]["max_mb"] * 2**20


def test_loads_by_name_without_network(name, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a shipped tokenizer must not touch the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    tok = tokenkit.load(name)
    want = SHIPPED[name]
    assert type(tok).__name__ == want["architecture"] and not tok.training
    assert tok.config_dict()["quantizer"] == want["quantizer"] and tok.codebook_size == want["K"]


def test_recipe_is_the_shipped_config(name):
    """The recipe's [model] is what config.json holds (it made these weights)."""
    model = load_config(REPO_ROOT / hub.pretrained_entry(name).recipe).model
    config = json.loads((folder_of(name) / "config.json").read_text())
    for key, value in model.items():
        if isinstance(value, dict):
            assert {k: config[key][k] for k in value} == value, key
        else:
            assert config[key] == value, key


def test_card_records_the_full_protocol(image_name, card):
    full = read_eval_results(card)
    protocol = full["protocol"]
    assert protocol["dataset"] == "fashion-mnist" and protocol["split"] == "test"
    assert protocol["num_items"] == 1000
    assert len(protocol["feature_network"]["sha256"]) == 64
    assert protocol["tokenizer"] == json.loads((folder_of(image_name) / "config.json").read_text())
    metrics = full["metrics"]
    for key in ("psnr", "ssim", "rfid", "precision", "recall", "density", "coverage", "cvu"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["tokens_per_image"] == SHIPPED[image_name]["tokens"] and metrics["bits_per_token"] == 9.0
    assert f"| psnr | {metrics['psnr']:.4g} |" in card  # the table shows the JSON's numbers


def test_quick_check_is_reproduced(image_name, card, quick_check):
    expected = json.loads(CHECK_BLOCK.search(card).group(1))
    assert expected["protocol"]["num_items"] == quick_check["protocol"]["num_items"] == 64
    assert expected["protocol"]["split"] == "test"
    got, want = quick_check["metrics"], expected["metrics"]
    assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-3)
    assert got["ssim"] == pytest.approx(want["ssim"], abs=1e-4)
    # tokens come from an argmin or an exact assignment: identical unless there is a tie
    for key in ("cvu", "perplexity", "codes_used_fraction", "distinct_codes_per_image"):
        assert got[key] == pytest.approx(want[key], rel=1e-2), key
    assert got["tokens_per_image"] == want["tokens_per_image"] == SHIPPED[image_name]["tokens"]


def test_quick_check_agrees_with_the_full_test_set(card, tok, fashion_test64, one_thread):
    """The 64 images' mean PSNR/SSIM lie within 4 standard errors of the 1000-image means."""
    full = read_eval_results(card)["metrics"]
    with torch.inference_mode():
        x_hat = tok.decode(tok.encode(fashion_test64)).clamp(-1, 1)
    for metric_name, metric in (("psnr", psnr), ("ssim", ssim)):
        per_image = metric(fashion_test64, x_hat, reduction="none").double()
        stderr = float(per_image.std()) / math.sqrt(len(per_image))
        assert abs(float(per_image.mean()) - full[metric_name]) < 4 * stderr, metric_name
