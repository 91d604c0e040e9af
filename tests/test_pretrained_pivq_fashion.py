"""The shipped tokenizer ``pivq-fashion``: it loads offline by name, its card's numbers hold, and it
behaves like a PI-VQ tokenizer on real images.

The card has two evaluations: the full one (the first 1000 Fashion-MNIST test images, with rFID and
PRDC) and a quick check (the first 64 test images, no Inception features). The 64 images are kept
in tests/data/fashion-mnist-test64 (cut from the Debian package, MIT), so this runs without the
package. On those real images the tests also check what makes it PI-VQ: 32 distinct codes per
image (matching quantization), a decoder that ignores the order of the codes, and interpolation
samples that are new images (neither parent).
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
from tokenkit.models.pivq import effective_capacity
from tokenkit.train.config import load_config

NAME = "pivq-fashion"
M, K = 32, 512
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
def tokens(tok, test64):
    with torch.inference_mode():
        return tok.encode(test64)


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
    assert (FOLDER / "model.safetensors").stat().st_size < 8 * 2**20


def test_loads_by_name_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a shipped tokenizer must not touch the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    tok = tokenkit.load(NAME)
    assert type(tok).__name__ == "PIVQTokenizer" and not tok.training
    assert tok.config_dict()["quantizer"] == "matching" and tok.codebook_size == K
    assert tok.config.num_latents == M and tok.quantizer.initialized


def test_recipe_is_the_shipped_config():
    """configs/pivq-fashion.toml [model] is what config.json holds (it made these weights)."""
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
    assert metrics["tokens_per_image"] == M and metrics["bits_per_token"] == 9.0
    assert metrics["distinct_codes_per_image"] == M  # matching: every code of a set is distinct
    assert f"| psnr | {metrics['psnr']:.4g} |" in card  # the table shows the JSON's numbers


def test_quick_check_is_reproduced(card, quick_check):
    expected = json.loads(CHECK_BLOCK.search(card).group(1))
    assert expected["protocol"]["num_items"] == quick_check["protocol"]["num_items"] == 64
    assert expected["protocol"]["split"] == "test"
    got, want = quick_check["metrics"], expected["metrics"]
    assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-3)
    assert got["ssim"] == pytest.approx(want["ssim"], abs=1e-4)
    # tokens come from an exact assignment: identical unless two assignments tie in total cost
    for key in ("cvu", "perplexity", "codes_used_fraction", "distinct_codes_per_image"):
        assert got[key] == pytest.approx(want[key], rel=1e-2), key
    assert got["tokens_per_image"] == want["tokens_per_image"] == M


def test_quick_check_agrees_with_the_full_test_set(card, tok, test64, tokens):
    """The 64 images' mean PSNR/SSIM lie within 4 standard errors of the 1000-image means."""
    full = read_eval_results(card)["metrics"]
    with torch.inference_mode():
        x_hat = tok.decode(tokens)
    for name, metric in (("psnr", psnr), ("ssim", ssim)):
        per_image = metric(test64, x_hat, reduction="none").double()
        stderr = float(per_image.std()) / math.sqrt(len(per_image))
        assert abs(float(per_image.mean()) - full[name]) < 4 * stderr, name


def test_token_sets_and_reconstructions(tok, test64, tokens):
    with torch.inference_mode():
        one_by_one = torch.cat([tok.encode(x[None]) for x in test64[:8]])
        x_hat = tok.decode(tokens)
    assert tokens.shape == (64, M) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < K
    assert effective_capacity(tokens) == 1.0  # M distinct codes in every image's set
    assert torch.equal(one_by_one, tokens[:8])
    assert x_hat.shape == test64.shape and torch.isfinite(x_hat).all()
    # a real reconstruction: much closer to its own image than to another test image (at 288 bits a
    # blurred garment may lie closer to a similar neighbour now and then: 63 of 64 here)
    own = (x_hat - test64).abs().mean(dim=(1, 2, 3))
    other = (x_hat - test64.roll(1, dims=0)).abs().mean(dim=(1, 2, 3))
    assert int((own < other).sum()) >= 60
    assert float(own.mean()) < 0.5 * float(other.mean())


def test_decoder_ignores_the_order_of_the_codes(tok, tokens):
    """The shipped decoder gives the same images for any permutation of each real image's set."""
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([t[torch.randperm(M, generator=g)] for t in tokens])
    assert not torch.equal(shuffled, tokens)
    with torch.inference_mode():
        a, b = tok.decode(tokens), tok.decode(shuffled)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_interpolation_samples_are_new_images(tok, test64, tokens):
    """sample() mixes two real images' sets; the result differs from both parents' reconstructions."""
    refs = tokens[:2]
    with torch.inference_mode():
        parents = tok.decode(refs)
        sample_tokens = tok.sample_tokens(8, refs, parents=2, generator=torch.Generator().manual_seed(1))
        samples = tok.decode(sample_tokens)
        again = tok.sample(8, refs, parents=2, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (8, 1, 28, 28) and torch.equal(samples, again)
    union = set(refs.flatten().tolist())
    for codes, image in zip(sample_tokens, samples, strict=True):
        assert len(set(codes.tolist())) == M and set(codes.tolist()) <= union
        assert set(codes.tolist()) not in (set(refs[0].tolist()), set(refs[1].tolist()))
        for parent in parents:  # a new image: mean |difference| 0.25-0.67 here, parents 0.86 apart
            assert (image - parent).abs().mean() > 0.1


def test_interpolation_walks_from_one_image_to_the_other(tok, test64):
    with torch.inference_mode():
        path = tok.interpolate(test64[0], test64[1], steps=5, generator=torch.Generator().manual_seed(2))
        ends = tok.decode(tok.encode(test64[:2]))
    assert path.shape == (5, 1, 28, 28)
    assert torch.allclose(path[0], ends[0], atol=1e-5) and torch.allclose(path[-1], ends[1], atol=1e-5)
    middle = path[2]
    assert (middle - ends[0]).abs().mean() > 0.1 and (middle - ends[1]).abs().mean() > 0.1
    # each step moves away from a and towards b
    to_a = [float((p - ends[0]).abs().mean()) for p in path]
    to_b = [float((p - ends[1]).abs().mean()) for p in path]
    assert to_a == sorted(to_a) and to_b == sorted(to_b, reverse=True)
