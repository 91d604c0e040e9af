"""PI-VQ tokenizer: permutation invariance, set tokens, interpolation sampling, a tiny training run
and the effective capacity of matching against nearest-neighbour quantization."""

from __future__ import annotations

import pytest
import torch

from tokenkit.models import Tokenizer
from tokenkit.models.pivq import PIVQConfig, PIVQTokenizer, effective_capacity
from tokenkit.ops.nearest import nearest_code

TINY = dict(
    image_size=16, channels=3, patch_size=4, width=32, depth=1, heads=4, num_latents=16, latent_dim=16
)


def tiny(**kw) -> PIVQTokenizer:
    torch.manual_seed(0)
    return PIVQTokenizer(**{**TINY, "quantizer_config": {"codebook_size": 64, "init_steps": 20}, **kw})


def synthetic_images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """A random colour with a random horizontal ramp, and one brighter quadrant (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    color = torch.rand(n, 3, 1, 1, generator=g) * 1.6 - 0.8
    slope = torch.rand(n, 1, 1, 1, generator=g) * 0.8 - 0.4
    ramp = torch.linspace(-1, 1, size).view(1, 1, 1, size)
    x = (color + slope * ramp).expand(n, 3, size, size).clone()
    half = size // 2
    for i, corner in enumerate(torch.randint(4, (n,), generator=g).tolist()):
        r, c = divmod(corner, 2)
        x[i, :, r * half : (r + 1) * half, c * half : (c + 1) * half] += 0.5
    return x.clamp(-1, 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP spin contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(one_thread) -> tuple[PIVQTokenizer, list[float], torch.Tensor]:
    """A tiny PI-VQ (16x16, M=16, K=64) after 60 Adam steps: 20 warm-up steps, then matching."""
    tok = tiny()
    data = synthetic_images(256, seed=0)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        out = tok(data[torch.randint(256, (16,), generator=g)])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.recon_loss.detach()))
    return tok.eval(), losses, synthetic_images(64, seed=2)


def test_reconstruction_loss_falls_below_the_mean_image(trained) -> None:
    tok, losses, held_out = trained
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.4 * first, f"recon loss {first:.4f} -> {last:.4f}"
    assert tok.quantizer.initialized
    with torch.no_grad():
        out = tok(held_out)
    mean_image_mse = float((held_out - held_out.mean(0)).square().mean())
    assert float(out.stats["mse"]) < 0.5 * mean_image_mse, "must beat predicting the mean image"
    assert len({tuple(sorted(t)) for t in out.tokens.tolist()}) > 32, "images get different code sets"


def test_capacity_matching_is_full_and_nearest_loses_some(trained) -> None:
    tok, _, held_out = trained
    tokens = tok.encode(held_out)
    assert effective_capacity(tokens) == 1.0
    z = tok.set_latents(held_out)
    nearest = nearest_code(z.reshape(-1, 16), tok.quantizer.codebook()).reshape(tokens.shape)
    assert effective_capacity(nearest) < 0.95


def test_decoder_is_invariant_to_permuting_the_codes(trained) -> None:
    tok, _, held_out = trained
    tokens = tok.encode(held_out[:8])
    g = torch.Generator().manual_seed(3)
    shuffled = torch.stack([t[torch.randperm(16, generator=g)] for t in tokens])
    assert not torch.equal(shuffled, tokens)
    torch.testing.assert_close(tok.decode(shuffled), tok.decode(tokens), atol=1e-5, rtol=0)
    # also on continuous sets straight into the decoder (no quantizer in between)
    s = torch.randn(4, 16, 16, generator=g)
    with torch.no_grad():
        ref = tok.decoder(s)
        for _ in range(3):
            perm = torch.randperm(16, generator=g)
            torch.testing.assert_close(tok.decoder(s[:, perm]), ref, atol=1e-5, rtol=0)


def test_encode_decode_forward_shapes_and_ranges() -> None:
    tok = tiny().eval()
    x = synthetic_images(3, seed=4)
    tokens = tok.encode(x)
    assert tokens.dtype == torch.long and tuple(tokens.shape) == (3, 16)
    assert all(row.unique().numel() == 16 for row in tokens)
    images = tok.decode(tokens)
    assert tuple(images.shape) == (3, 3, 16, 16) and images.abs().max() <= 1.0
    out = tok(x)
    assert torch.equal(out.tokens, tokens)
    torch.testing.assert_close(out.loss, out.recon_loss + out.quantizer_loss)
    assert {"perplexity", "usage", "distinct_per_sample", "mse", "psnr"} <= set(out.stats)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        tok.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        tok.decode(torch.zeros(2, 15, dtype=torch.long))


def test_config_round_trip_through_the_registry() -> None:
    tok = tiny()
    d = tok.config_dict()
    assert d["architecture"] == "PIVQTokenizer" and d["quantizer"] == "matching"
    again = Tokenizer.from_config_dict(d)
    assert isinstance(again, PIVQTokenizer) and again.config == tok.config
    again.load_state_dict(tok.state_dict())
    x = synthetic_images(2, seed=5)
    assert torch.equal(again.eval().encode(x), tok.eval().encode(x))
    with pytest.raises(ValueError, match="patch_size"):
        PIVQConfig(image_size=16, patch_size=5)


def test_sample_mixes_the_code_sets_of_parents(trained) -> None:
    tok, _, held_out = trained
    refs = tok.encode(held_out[:6])
    g = torch.Generator().manual_seed(6)
    mixed = tok.sample_tokens(20, refs, parents=2, generator=g)
    assert tuple(mixed.shape) == (20, 16)
    sets = [set(r.tolist()) for r in refs]
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    for row in mixed.tolist():
        assert len(set(row)) == 16, "the union of two sets has >= 16 distinct codes: no repeats"
        assert any(set(row) <= sets[i] | sets[j] for i, j in pairs), "codes come from two references"
    assert len({tuple(sorted(row)) for row in mixed.tolist()}) > 10, "the mixes differ"
    # decoded mixes are new images: none reproduces a reference's reconstruction
    distance = (tok.decode(mixed)[:, None] - tok.decode(refs)[None]).abs().mean((2, 3, 4))  # (20, 6)
    assert float(distance.min()) > 0.02, f"a sample copies a parent (mean abs diff {distance.min():.3f})"
    images = tok.sample(5, held_out[:6], parents=2, generator=torch.Generator().manual_seed(7))
    assert tuple(images.shape) == (5, 3, 16, 16) and images.abs().max() <= 1.0
    with pytest.raises(ValueError, match="parents"):
        tok.sample(1, refs[:1], parents=2)


def test_sample_repeats_codes_only_when_the_union_is_small() -> None:
    tok = tiny()
    refs = torch.stack([torch.arange(16), torch.arange(16)])  # union of 16 codes exactly
    assert sorted(tok.sample_tokens(1, refs, parents=2)[0].tolist()) == list(range(16))
    refs = torch.stack([torch.arange(16) % 10, torch.arange(16) % 10])
    row = tok.sample_tokens(1, refs, parents=2)[0]
    assert set(row.tolist()) == set(range(10)) and row.numel() == 16


def test_interpolation_walks_from_one_set_to_the_other(trained) -> None:
    tok, _, held_out = trained
    a, b = held_out[0], held_out[1]
    ta, tb = tok.encode(a[None])[0], tok.encode(b[None])[0]
    steps = tok.interpolate_tokens(a, b, 5, generator=torch.Generator().manual_seed(8))
    assert tuple(steps.shape) == (5, 16)
    assert set(steps[0].tolist()) == set(ta.tolist()) and set(steps[-1].tolist()) == set(tb.tolist())
    shared = set(ta.tolist()) & set(tb.tolist())
    for s, t in enumerate([0.0, 0.25, 0.5, 0.75, 1.0]):
        k = round(t * 16)
        row = steps[s].tolist()
        assert len(set(row) & (set(tb.tolist()) - shared)) >= min(k, 16 - len(shared))
        assert set(row) <= set(ta.tolist()) | set(tb.tolist())
    same = tok.interpolate_tokens(ta, tb, 5, generator=torch.Generator().manual_seed(8))  # code sets work too
    assert torch.equal(same, steps)
    images = tok.interpolate(a, b, 5, generator=torch.Generator().manual_seed(8))
    assert tuple(images.shape) == (5, 3, 16, 16)
    rec_a, rec_b = tok.decode(ta[None])[0], tok.decode(tb[None])[0]
    torch.testing.assert_close(images[0], rec_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(images[-1], rec_b, atol=1e-5, rtol=0)
    middle = images[2]
    gap = float((rec_a - rec_b).abs().mean())
    assert float((middle - rec_a).abs().mean()) > 0.05 * gap
    assert float((middle - rec_b).abs().mean()) > 0.05 * gap
    assert float((middle - a).abs().mean()) > 0.01 and float((middle - b).abs().mean()) > 0.01


def test_effective_capacity() -> None:
    assert effective_capacity(torch.tensor([[0, 1, 2, 3], [5, 5, 6, 6]])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"\(B, M\)"):
        effective_capacity(torch.tensor([1, 2, 3]))


def test_save_and_load_pretrained_round_trip(trained, tmp_path) -> None:
    tok, _, held_out = trained
    folder = tok.save_pretrained(tmp_path / "pivq-tiny")
    loaded = PIVQTokenizer.from_pretrained(folder).eval()
    assert loaded.quantizer.initialized, "the delayed-init state travels with the weights"
    tokens = tok.encode(held_out[:8])
    assert torch.equal(loaded.encode(held_out[:8]), tokens)
    assert torch.equal(loaded.decode(tokens), tok.decode(tokens))
