"""The Tokenizer contract, ImageTokenizer and AudioTokenizer (small models, synthetic data)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tokenkit.models import Tokenizer, available, get
from tokenkit.models.audio import AudioTokenizer, AudioTokenizerConfig, stft_loss
from tokenkit.models.image import ImageTokenizer, ImageTokenizerConfig


@pytest.fixture(autouse=True)
def _one_thread():
    # the CI machine is shared: several torch threads per process thrash instead of helping
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_image(**kw) -> ImageTokenizer:
    torch.manual_seed(0)
    cfg = dict(channels=3, base_width=8, channel_mults=(1, 2), latent_dim=8)
    cfg["quantizer_config"] = {"codebook_size": 32}
    cfg.update(kw)
    return ImageTokenizer(**cfg)


def tiny_audio(**kw) -> AudioTokenizer:
    torch.manual_seed(0)
    cfg = dict(base_width=4, strides=(2, 5), dilations=(1, 3), latent_dim=8, stft_sizes=(64, 128),
               quantizer_config={"codebook_size": 32})
    cfg.update(kw)
    return AudioTokenizer(**cfg)


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms with garbage (not zeros) in the padding, to show the mask is what counts."""
    g = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    x = torch.full((len(lengths), 1, longest), 0.7)
    mask = torch.zeros(len(lengths), longest, dtype=torch.bool)
    for i, n in enumerate(lengths):
        t = torch.arange(n) / 16000
        x[i, 0, :n] = 0.5 * torch.sin(2 * math.pi * (200 + 150 * i) * t) + 0.05 * torch.randn(n, generator=g)
        mask[i, :n] = True
    return x, mask


# -- contract --------------------------------------------------------------------------------
def test_registry_lists_the_architectures():
    assert {"ImageTokenizer", "AudioTokenizer"} <= set(available())
    assert get("ImageTokenizer") is ImageTokenizer
    assert get("AudioTokenizer") is AudioTokenizer


@pytest.mark.parametrize("make", [tiny_image, tiny_audio])
def test_config_dict_round_trips_through_json(make):
    tok = make(quantizer="ema", quantizer_config={"codebook_size": 16, "decay": 0.9})
    d = json.loads(json.dumps(tok.config_dict()))
    assert d["architecture"] == type(tok).__name__ == tok.architecture
    assert d["quantizer"] == "ema" and d["quantizer_config"] == {"codebook_size": 16, "decay": 0.9}
    assert "tokenkit_version" in d
    again = Tokenizer.from_config_dict(d)
    assert type(again) is type(tok) and again.config == tok.config  # tuples come back as tuples
    assert again.quantizer.codebook_size == 16
    assert sorted(again.state_dict()) == sorted(tok.state_dict())


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"no field\(s\) \['latent_size'\]"):
        ImageTokenizerConfig.from_dict({"latent_size": 4})
    with pytest.raises(ValueError, match="architecture"):
        Tokenizer.from_config_dict({"quantizer": "nearest"})
    with pytest.raises(LookupError, match="unknown tokenizer architecture 'Nope'"):
        Tokenizer.from_config_dict({"architecture": "Nope"})
    with pytest.raises(TypeError, match="not a AudioTokenizer"):
        AudioTokenizer.from_config_dict(tiny_image().config_dict())
    with pytest.raises(ValueError, match="recon_loss must be one of"):
        ImageTokenizerConfig(recon_loss="l3")
    with pytest.raises(ValueError, match="strides"):
        AudioTokenizerConfig(strides=(1, 4))


def test_quantizer_gets_the_latent_dim_and_mismatch_is_explained():
    tok = tiny_image(quantizer="fsq", quantizer_config={"levels": [5, 5, 5]})
    assert tok.quantizer.dim == 8 and tok.codebook_size == 125
    with pytest.raises(ValueError, match="latent_dim = 8"):
        tiny_image(quantizer="nearest", quantizer_config={"dim": 4, "codebook_size": 8})


# -- images ----------------------------------------------------------------------------------
def test_image_tokens_layout_and_round_trip():
    tok = tiny_image().eval()
    x = torch.rand(2, 3, 16, 12) * 2 - 1
    out = tok(x)
    assert out.tokens.shape == (2, 8, 6) and out.tokens.dtype == torch.long
    assert out.reconstruction.shape == x.shape
    tokens = tok.encode(x)
    assert torch.equal(tokens, out.tokens)
    decoded = tok.decode(tokens)
    # forward adds z + (e - z).detach() (straight-through): equal to decode up to rounding
    assert torch.allclose(decoded, out.reconstruction.clamp(-1, 1), atol=1e-4)
    assert decoded.min() >= -1 and decoded.max() <= 1
    # loss bookkeeping: loss = recon + quantizer; L1 recon on [-1, 1]
    assert torch.allclose(out.loss, out.recon_loss + out.quantizer_loss)
    assert torch.allclose(out.recon_loss, (out.reconstruction - x).abs().mean())
    mse = (out.reconstruction - x).square().mean()
    assert torch.allclose(out.stats["psnr"], 10 * torch.log10(4 / mse), atol=1e-4)
    assert {"perplexity", "usage", "recon_loss"} <= set(out.stats)


def test_image_mse_loss_and_gradients_reach_the_encoder():
    tok = tiny_image(recon_loss="mse")
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    out = tok(x)
    assert torch.allclose(out.recon_loss, (out.reconstruction - x).square().mean())
    out.loss.backward()
    assert tok.encoder.conv_in.weight.grad.abs().sum() > 0
    assert tok.decoder.conv_out.weight.grad.abs().sum() > 0


def test_image_bad_input():
    tok = tiny_image()
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 2"):
        tok(torch.zeros(1, 3, 9, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tok(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"tokens \(B, h, w\)"):
        tok.decode(torch.zeros(2, 4, dtype=torch.long))


# -- audio -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "quantizer, qcfg", [("nearest", {"codebook_size": 32}), ("fsq", {"levels": [5, 5, 5]})]
)
def test_audio_batch_equals_one_at_a_time(quantizer, qcfg):
    tok = tiny_audio(quantizer=quantizer, quantizer_config=qcfg).eval()
    lengths = [437, 1000, 10, 571]
    x, mask = padded_batch(lengths)
    with torch.no_grad():
        out = tok(x, mask)
    tokens = tok.encode(x, mask)
    assert tokens.shape == (4, 100) and torch.equal(tokens, out.tokens)
    for i, n in enumerate(lengths):
        single = x[i : i + 1, :, :n]
        with torch.no_grad():
            one = tok(single)
        n_tok = math.ceil(n / tok.hop)
        assert torch.equal(one.tokens[0], out.tokens[i, :n_tok])
        assert torch.equal(tok.encode(single)[0], tokens[i, :n_tok])
        assert torch.allclose(one.reconstruction[0], out.reconstruction[i, :, :n], atol=1e-5)
        assert torch.all(out.reconstruction[i, :, n:] == 0)  # padding is silent in the output


def test_audio_padding_content_does_not_matter_and_loss_counts_valid_samples():
    tok = tiny_audio().eval()
    x, mask = padded_batch([300, 800])
    y = x.clone()
    y[~mask.unsqueeze(1)] = -0.3
    with torch.no_grad():
        a, b = tok(x, mask), tok(y, mask)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.reconstruction, b.reconstruction)
    assert torch.allclose(a.loss, b.loss)
    l1 = ((a.reconstruction - x * mask.unsqueeze(1)).abs()[mask.unsqueeze(1)]).mean()
    assert torch.allclose(a.stats["l1"], l1, atol=1e-6)


def test_audio_decode_length_and_range():
    tok = tiny_audio().eval()
    x, _ = padded_batch([1000, 1000])
    tokens = tok.encode(x[:, :, :995])  # 995 samples -> ceil(995 / 10) = 100 tokens
    assert tokens.shape == (2, 100)
    wav = tok.decode(tokens)
    assert wav.shape == (2, 1, 1000) and wav.abs().max() <= 1
    assert tok.tokens_per_second == 1600


def test_audio_bad_input():
    tok = tiny_audio()
    x, mask = padded_batch([30, 40])
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        tok(torch.zeros(2, 100))
    holes = mask.clone()
    holes[1, 5] = False
    with pytest.raises(ValueError, match="prefix"):
        tok(x, holes)
    with pytest.raises(ValueError, match="bool tensor"):
        tok(x, mask.float())


def test_stft_loss_is_zero_for_identical_signals_and_grows_with_error():
    torch.manual_seed(0)
    x = torch.randn(2, 2048) * 0.3
    assert float(stft_loss(x, x, None, 256)) == pytest.approx(0.0, abs=1e-6)
    small = stft_loss(x, x + 0.01 * torch.randn_like(x), None, 256)
    large = stft_loss(x, x + 0.1 * torch.randn_like(x), None, 256)
    assert 0 < float(small) < float(large)
