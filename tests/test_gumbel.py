"""GumbelQuantizer against hand computations: deterministic eval, hard rows, KL to uniform, temperature."""

import math

import pytest
import torch

from tokenkit.quantizers.gumbel import GumbelConfig, GumbelQuantizer


def make(**config) -> GumbelQuantizer:
    torch.manual_seed(0)
    return GumbelQuantizer(**{"dim": 8, "codebook_size": 16, **config})


def with_logits(log_p: list[float], **config) -> GumbelQuantizer:
    """A quantizer whose logits are ``log_p`` whatever the input (zero weight, bias = log p)."""
    vq = make(codebook_size=len(log_p), **config)
    with torch.no_grad():
        vq.proj.weight.zero_()
        vq.proj.bias.copy_(torch.tensor(log_p))
    return vq


def test_eval_forward_equals_decode_of_encode():
    vq = make().eval()
    z = torch.randn(3, 20, 8, requires_grad=True)
    out = vq(z)
    assert torch.equal(out.quantized, vq.decode(vq.encode(z)))
    assert torch.equal(out.indices, vq.proj(z).argmax(-1))
    with torch.no_grad():
        assert torch.equal(vq(z).quantized, out.quantized)  # no noise: the same every call
    out.quantized.sum().backward()  # gradients still reach the encoder in eval
    assert z.grad.abs().sum() > 0


def test_hard_mode_outputs_exact_codebook_rows():
    vq = make(hard=True).train()
    z = torch.randn(2, 30, 8)
    out = vq(z)
    assert torch.equal(out.quantized, vq.embedding.detach()[out.indices])
    soft = make(hard=False).train()(z)
    assert not torch.allclose(soft.quantized, vq.embedding.detach()[soft.indices], atol=1e-3)


def test_hard_mode_gradient_is_the_soft_samples_gradient():
    z = torch.randn(2, 10, 8)
    upstream = torch.randn(2, 10, 8)
    grads = {}
    for hard in (False, True):
        vq = make(hard=hard).train()  # the same weights for both
        zz = z.clone().requires_grad_(True)
        torch.manual_seed(123)  # the same Gumbel noise for both
        (vq(zz).quantized * upstream).sum().backward()
        grads[hard] = zz.grad
    # straight-through: forward is the hard row, backward is the soft sample's path
    assert grads[True].abs().sum() > 0
    assert torch.allclose(grads[True], grads[False], atol=1e-6)


def test_kl_to_uniform_matches_hand_computation():
    p = [0.5, 0.25, 0.125, 0.125]
    vq = with_logits([math.log(x) for x in p], kl_weight=2.0)
    out = vq(torch.randn(1, 5, 8))
    # KL(p || U(4)) = sum p log(4 p) = 0.5 log 2 + 0.25 log 1 + 2 * 0.125 log 0.5 = 0.25 log 2
    assert out.stats["kl"].item() == pytest.approx(0.25 * math.log(2), rel=1e-5)
    assert out.loss.item() == pytest.approx(2.0 * 0.25 * math.log(2), rel=1e-5)
    uniform = with_logits([0.3] * 4)
    assert uniform(torch.randn(1, 5, 8)).loss.item() == pytest.approx(0.0, abs=1e-7)


def test_kl_is_averaged_over_valid_positions_only():
    vq = make(kl_weight=1.0).eval()
    z = torch.randn(1, 6, 8)
    mask = torch.tensor([[True, True, True, False, False, False]])
    q = torch.softmax(vq.proj(z).detach(), -1)
    kl_per_position = (q * torch.log(q * 16)).sum(-1)
    assert vq(z, mask).loss.item() == pytest.approx(kl_per_position[0, :3].mean().item(), rel=1e-5)
    assert vq(z).loss.item() == pytest.approx(kl_per_position.mean().item(), rel=1e-5)


def test_small_temperature_makes_samples_one_hot():
    logits = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    vq = make(temperature=0.01)
    torch.manual_seed(1)
    cold = vq.relaxed_one_hot(logits)
    vq.temperature = 100.0
    hot = vq.relaxed_one_hot(logits)
    assert torch.allclose(cold.sum(-1), torch.ones(2000))
    assert cold.max(-1).values.mean() > 0.99
    assert hot.max(-1).values.mean() < 0.2  # near uniform (1/16) at high temperature
    # through forward: a cold soft sample's mixture is (almost) the chosen code's row
    vq.temperature = 0.01
    out = vq.train()(torch.randn(1, 200, 8))
    row_error = (out.quantized - vq.embedding.detach()[out.indices]).norm(dim=-1)
    assert row_error.median() < 1e-3


def test_gumbel_max_samples_follow_softmax_of_the_logits():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    vq = with_logits(p.log().tolist()).train()
    torch.manual_seed(2)
    indices = vq(torch.zeros(1, 20000, 8)).indices
    freq = indices.flatten().bincount(minlength=4).float() / 20000
    assert torch.allclose(freq, p, atol=0.015)


def test_bad_config_is_explained():
    with pytest.raises(ValueError, match="temperature"):
        GumbelConfig(temperature=0.0)
    with pytest.raises(ValueError, match="codebook_size"):
        GumbelConfig(codebook_size=1)
