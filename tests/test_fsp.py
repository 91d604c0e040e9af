"""FSP: CDF activations and their variance targets, Lloyd-Max centroid quantization, the in-bin
perturbation and its support check, the perturb/quantize mix, mixed-radix indices, Lloyd-Max refit."""

from __future__ import annotations

import math

import pytest
import torch

from tokenkit.quantizers.fsp import ACTIVATIONS, FSPQuantizer, mixed_radix_basis, uniform_centroids
from tokenkit.quantizers.vp import moment_loss


def pre_activation(u: torch.Tensor, activation: str = "tanh") -> torch.Tensor:
    """The pre-activation ``a`` with ``g(a) = u``."""
    return ACTIVATIONS[activation][1](u.clamp(1e-6, 1 - 1e-6))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_variance_targets_and_uniform_transform(activation: str) -> None:
    """If a ~ the distribution with CDF g: var(a) is the Eq. 14 target and g(a) is uniform."""
    cdf, icdf, target = ACTIVATIONS[activation]
    g = torch.Generator().manual_seed(0)
    a = icdf(torch.rand(400000, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12))
    assert abs(float(a.var()) / target - 1) < 0.02
    u = cdf(a)
    torch.testing.assert_close(torch.histc(u.float(), bins=10, min=0, max=1) / len(u), torch.full((10,), 0.1),
                               atol=3e-3, rtol=0)
    expected = {"tanh": math.pi**2 / 12, "sigmoid": math.pi**2 / 3, "normal": 1.0, "laplace": 2.0}[activation]
    assert abs(target - expected) < 1e-12
    q = FSPQuantizer(activation=activation, levels=[4, 4])
    assert q.target_variance == target
    # a batch with the target moments costs (almost) no L_norm
    batch = a[:20000].float().reshape(10000, 2)
    assert float(moment_loss(batch, None, 0.1, 0.07, target_var=target)) < 5e-4


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_centroid_quantization_maps_uniform_inputs_to_bin_centres(activation: str) -> None:
    q = FSPQuantizer(levels=[8, 5], activation=activation, output="unit").eval()
    u = torch.rand(1, 5000, 2, generator=torch.Generator().manual_seed(1)) * 0.998 + 0.001
    out = q(pre_activation(u, activation))
    levels = torch.tensor([8.0, 5.0])
    digits = torch.clamp(torch.floor(u * levels), max=levels - 1)
    torch.testing.assert_close(out.quantized, (digits + 0.5) / levels, atol=1e-5, rtol=0)  # Eq. 15
    assert torch.equal(out.indices, digits[..., 0].long() + 8 * digits[..., 1].long())
    # Lloyd-Max for a uniform source: the error is uniform in +-1/(2L), mean 0, variance 1/(12 L^2)
    err = (out.quantized - u).reshape(-1, 2)
    assert float(err.mean(0).abs().max()) < 3e-3
    torch.testing.assert_close(err.var(0), 1 / (12 * levels**2), rtol=0.06, atol=0)


def test_uniform_centroids_are_bin_centres() -> None:
    table = uniform_centroids([4, 2])
    torch.testing.assert_close(table, torch.tensor([[0.125, 0.375, 0.625, 0.875], [0.25, 0.75, 1.0, 1.0]]))


@pytest.mark.parametrize("acceptance", ["vector", "element"])
def test_perturbation_never_leaves_the_unit_cube(acceptance: str) -> None:
    torch.manual_seed(2)
    q = FSPQuantizer(levels=[8, 5, 5, 5], acceptance=acceptance)
    edges = torch.tensor([0.0, 1e-4, 0.03, 0.5, 0.97, 1 - 1e-4, 1.0])
    u = torch.cat([torch.rand(20000, 4), edges[torch.randint(7, (20000, 4))]])
    for _ in range(5):
        noise = q.perturbation(u)
        moved = u + noise
        assert float(moved.min()) >= 0.0 and float(moved.max()) <= 1.0
        assert bool((noise.abs() <= 1 / (2 * torch.tensor([8.0, 5, 5, 5])) + 1e-7).all())
    rejected = (noise == 0).all(-1)
    if acceptance == "vector":  # a rejected vector keeps every coordinate
        assert bool(((noise == 0).any(-1) == rejected).all())
    # inside, far from the faces, every proposal is accepted: noise ~ U(+-1/2L), the quantization error
    middle = torch.full((50000, 4), 0.5)
    noise = q.perturbation(middle)
    assert bool((noise != 0).all())
    torch.testing.assert_close(noise.var(0), 1 / (12 * torch.tensor([8.0, 5, 5, 5]) ** 2), rtol=0.05, atol=0)


def test_training_perturbation_stays_in_unit_interval_and_is_a_detached_bias() -> None:
    torch.manual_seed(3)
    q = FSPQuantizer(levels=[8, 5, 5, 5], quantize_rate=0.0, output="unit")
    u = torch.rand(4, 500, 4)
    a = pre_activation(u).requires_grad_(True)
    out = q(a)
    values = out.quantized.detach()
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0
    assert float(out.stats["perturbed"]) == 1.0
    on_centroid = ((values * torch.tensor([8.0, 5, 5, 5]) - 0.5).frac().abs() < 1e-6).float().mean()
    assert float(on_centroid) < 0.01  # perturbed values are not quantized ones
    out.quantized.sum().backward()
    a_ref = a.detach().clone().requires_grad_(True)
    ((torch.tanh(a_ref) + 1) / 2).sum().backward()
    torch.testing.assert_close(a.grad, a_ref.grad)  # d z~ / d a = g'(a): the bias carries no gradient


@pytest.mark.parametrize("mix", ["forward", "element"])
def test_perturb_quantize_mix(mix: str) -> None:
    torch.manual_seed(4)
    q = FSPQuantizer(levels=[8, 5], quantize_rate=0.5, mix=mix, output="unit")
    a = pre_activation(torch.rand(1, 400, 2))
    levels = torch.tensor([8.0, 5.0])
    shares = []
    for _ in range(200 if mix == "forward" else 10):
        out = q(a)
        scaled = out.quantized.detach() * levels - 0.5
        on_centroid = (scaled - scaled.round()).abs() < 1e-6
        shares.append(float(on_centroid.float().mean()))
        assert abs(float(out.stats["perturbed"]) - (1 - shares[-1])) < 0.01
    shares = torch.tensor(shares)
    if mix == "forward":  # Eq. 18: the whole forward pass is either perturbed or quantized
        assert bool(((shares < 0.01) | (shares == 1)).all())
    else:  # the code's variant: about half of the elements in every forward
        assert bool(((shares > 0.4) & (shares < 0.6)).all())
    assert abs(float(shares.mean()) - 0.5) < 0.1


def test_eval_always_quantizes_and_standardized_output() -> None:
    q = FSPQuantizer(levels=[8, 5, 5, 5], quantize_rate=0.0).eval()
    u = torch.rand(2, 300, 4, generator=torch.Generator().manual_seed(5))
    out = q(pre_activation(u))
    unit = out.quantized / math.sqrt(12) + 0.5
    levels = torch.tensor([8.0, 5, 5, 5])
    centres = (torch.floor(u * levels).clamp(max=levels - 1) + 0.5) / levels
    torch.testing.assert_close(unit, centres, atol=1e-5, rtol=0)
    table = q.codebook()  # every code of the standardised grid: zero mean, unit variance
    assert abs(float(table.mean())) < 1e-5
    torch.testing.assert_close(table.var(0, unbiased=False), 1 - 1 / levels**2, atol=1e-5, rtol=0)


def test_mixed_radix_round_trip() -> None:
    levels = [8, 5, 5, 5]
    q = FSPQuantizer(levels=levels, output="inverse").eval()
    assert q.codebook_size == 1000
    assert mixed_radix_basis(levels).tolist() == [1, 8, 40, 200]
    every = torch.arange(1000)
    digits = q.indices_to_digits(every)
    assert digits[1].tolist() == [1, 0, 0, 0] and digits[8].tolist() == [0, 1, 0, 0]  # first dim fastest
    assert digits[999].tolist() == [7, 4, 4, 4]
    assert torch.equal(q.digits_to_indices(digits), every)
    assert torch.unique(digits, dim=0).shape[0] == 1000
    # inverse-CDF output: decode gives pre-activations that encode back to the same code
    codes = every.reshape(10, 100)
    assert torch.equal(q.encode(q.decode(codes)), codes)


def test_projections_when_dim_differs() -> None:
    torch.manual_seed(6)
    q = FSPQuantizer(levels=[8, 5, 5, 5], dim=32)
    assert q.dim == 32 and isinstance(q.project_in, torch.nn.Linear)
    z = torch.randn(2, 16, 32, requires_grad=True)
    out = q(z)
    assert out.quantized.shape == z.shape
    (out.quantized.sum() + out.loss).backward()
    assert q.project_in.weight.grad is not None and float(q.project_in.weight.grad.abs().sum()) > 0


# -- Lloyd-Max refit ---------------------------------------------------------------------------------
def test_lloyd_max_refit_keeps_uniform_optimum_from_a_bad_start() -> None:
    q = FSPQuantizer(levels=[5, 4], output="unit")
    with torch.no_grad():  # start far from the optimum, unevenly spread
        q.centroids[0, :5] = torch.tensor([0.02, 0.05, 0.1, 0.15, 0.9])
        q.centroids[1, :4] = torch.tensor([0.6, 0.7, 0.8, 0.95])
    u = torch.rand(200000, 2, generator=torch.Generator().manual_seed(7))
    table = q.fit_centroids(pre_activation(u), iters=2000, tol=1e-8)
    torch.testing.assert_close(table[0, :5], (torch.arange(5.0) + 0.5) / 5, atol=4e-3, rtol=0)
    torch.testing.assert_close(table[1, :4], (torch.arange(4.0) + 0.5) / 4, atol=4e-3, rtol=0)


def test_lloyd_max_refit_finds_two_point_mixture() -> None:
    g = torch.Generator().manual_seed(8)
    n = 30000
    first = torch.rand(n, generator=g) < 0.3
    u = torch.where(first, 0.2, 0.7) + 0.01 * torch.randn(n, generator=g)
    q = FSPQuantizer(levels=[2, 2], output="unit")
    latents = pre_activation(torch.stack([u, 1 - u], dim=1))
    table = q.fit_centroids(latents)
    unit = torch.stack([u, 1 - u], 1).clamp(1e-6, 1 - 1e-6)
    torch.testing.assert_close(table[0], torch.stack([unit[first, 0].mean(), unit[~first, 0].mean()]),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(table[1], torch.stack([unit[~first, 1].mean(), unit[first, 1].mean()]),
                               atol=1e-4, rtol=0)
    # quantization now lands on the mixture's points: error ~ the 0.01 spread, not the 1/4 bin error
    q.eval()
    err = (q(latents[None]).quantized[0] - unit).abs().mean()
    assert float(err) < 0.01


def test_refitted_centroids_save_load_and_reset() -> None:
    g = torch.Generator().manual_seed(9)
    q = FSPQuantizer(levels=[4, 3], output="unit")
    u = torch.rand(20000, 2, generator=g) ** 2  # skewed towards 0
    q.fit_centroids(pre_activation(u))
    assert float(q.centroids[0, 0]) < 0.125 - 0.05  # moved towards the mass
    fresh = FSPQuantizer(levels=[4, 3], output="unit")
    fresh.load_state_dict(q.state_dict())
    z = pre_activation(torch.rand(3, 50, 2, generator=g))
    assert torch.equal(fresh.encode(z), q.encode(z))
    torch.testing.assert_close(fresh.eval()(z).quantized, q.eval()(z).quantized)
    # nearest refitted centroid per dimension
    unit = ACTIVATIONS["tanh"][0](z)
    nearest = (unit[..., 0:1] - q.centroids[0, :4]).abs().argmin(-1)
    assert torch.equal(q.indices_to_digits(q.encode(z))[..., 0], nearest)
    q.reset_centroids()
    torch.testing.assert_close(q.centroids, uniform_centroids([4, 3]))


def test_bad_config_names_the_problem() -> None:
    with pytest.raises(ValueError, match="levels"):
        FSPQuantizer(levels=[8, 1])
    with pytest.raises(ValueError, match="activation"):
        FSPQuantizer(activation="cauchy")
    with pytest.raises(ValueError, match="mix"):
        FSPQuantizer(mix="batch")
    with pytest.raises(ValueError, match="quantize_rate"):
        FSPQuantizer(quantize_rate=1.5)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        FSPQuantizer().fit_centroids(torch.randn(10, 3))
