"""FSQuantizer: exact index round trip over the grid, grid membership, even/odd levels, straight-through."""

import math

import pytest
import torch

from tokenkit.quantizers.fsq import FSQConfig, FSQuantizer

LEVEL_SETS = [[8, 5, 5, 5], [2, 3, 4, 5, 8], [7, 6]]


def preimage(fsq: FSQuantizer, grid: torch.Tensor) -> torch.Tensor:
    """Latents whose bound lies 10% inside each grid point (the outermost points are never reached)."""
    target = 0.9 * grid * fsq.half_width
    u = ((target + fsq._offset) / fsq._half_l).clamp(-0.9999, 0.9999)
    return torch.atanh(u) - fsq._shift


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_indices_round_trip_over_the_whole_grid(levels):
    fsq = FSQuantizer(levels=levels)
    k = fsq.codebook_size
    assert k == math.prod(levels)
    grid = fsq.decode(torch.arange(k)[None])  # (1, K, d): every code once
    assert torch.unique(grid[0], dim=0).shape[0] == k  # K distinct points
    assert torch.equal(fsq.encode(preimage(fsq, grid)), torch.arange(k)[None])
    assert torch.equal(fsq.codebook(), grid[0])


def test_mixed_radix_index_by_hand():
    fsq = FSQuantizer(levels=[8, 5, 5, 5])
    # digits (1, 2, 3, 4): index = 1 + 2 * 8 + 3 * 40 + 4 * 200
    digits = torch.tensor([1, 2, 3, 4])
    grid = ((digits - torch.tensor([4, 2, 2, 2])).float() / torch.tensor([4.0, 2.0, 2.0, 2.0]))[None, None]
    assert fsq.encode(preimage(fsq, grid)).item() == 937
    assert torch.equal(fsq.decode(torch.tensor([[937]])), grid)


@pytest.mark.parametrize(
    "level, values",
    [
        (2, [-1.0, 0.0]),
        (3, [-1.0, 0.0, 1.0]),
        (4, [-1.0, -0.5, 0.0, 0.5]),
        (5, [-1.0, -0.5, 0.0, 0.5, 1.0]),
        (8, [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]),
    ],
)
def test_even_and_odd_levels_give_exactly_L_values_in_range(level, values):
    fsq = FSQuantizer(levels=[level])
    z = torch.linspace(-12, 12, 20001)[None, :, None]
    out = fsq(z)
    assert torch.unique(out.quantized).tolist() == values
    assert torch.unique(out.indices).tolist() == list(range(level))
    assert out.quantized.min() >= -1 and out.quantized.max() <= 1
    # the index order follows the value order
    assert torch.all(out.indices[0, 1:] >= out.indices[0, :-1])


def test_quantized_values_lie_on_the_grid():
    fsq = FSQuantizer(levels=[8, 5, 5, 5])
    z = 3 * torch.randn(4, 256, 4, generator=torch.Generator().manual_seed(0))
    out = fsq(z)
    scaled = out.quantized * fsq.half_width  # integers in [-floor(L/2), L - 1 - floor(L/2)]
    assert torch.equal(scaled, scaled.round())
    assert torch.all(scaled >= -fsq.half_width) and torch.all(scaled <= fsq.levels - 1 - fsq.half_width)
    assert torch.equal(out.quantized, fsq.decode(out.indices))  # forward == decode(encode), exactly
    assert torch.equal(out.indices, fsq.encode(z))
    # values come from rounding the bound: |quantized - bound / floor(L/2)| <= half a step
    assert torch.all((out.quantized - fsq.bound(z) / fsq.half_width).abs() <= 0.5 / fsq.half_width + 1e-6)
    assert out.loss.item() == 0.0
    assert out.stats["usage"].item() > 0.3


def test_odd_bound_is_floor_half_L_tanh():
    fsq = FSQuantizer(levels=[5, 7])
    z = torch.linspace(-3, 3, 11)[:, None].repeat(1, 2)
    expected = torch.stack([2 * 0.999 * torch.tanh(z[:, 0]), 3 * 0.999 * torch.tanh(z[:, 1])], 1)
    assert torch.allclose(fsq.bound(z), expected, atol=1e-6)


def test_gradients_pass_straight_through_the_rounding():
    fsq = FSQuantizer(levels=[8, 5])
    z = torch.randn(2, 50, 2, generator=torch.Generator().manual_seed(1), requires_grad=True)
    upstream = torch.randn(2, 50, 2, generator=torch.Generator().manual_seed(2))
    (fsq(z).quantized * upstream).sum().backward()
    # d quantized / d z = f'(z) / floor(L/2) with f(z) = h tanh(z + s) - o: rounding is skipped
    t = torch.tanh(z.detach() + fsq._shift)
    expected = upstream * fsq._half_l * (1 - t**2) / fsq.half_width
    assert torch.allclose(z.grad, expected, atol=1e-6)


def test_projection_when_dim_differs_from_number_of_levels():
    torch.manual_seed(0)
    fsq = FSQuantizer(levels=[8, 5, 5, 5], dim=16)
    assert fsq.dim == 16 and fsq.codebook_size == 1000
    assert set(fsq.state_dict()) == {
        "project_in.weight",
        "project_in.bias",
        "project_out.weight",
        "project_out.bias",
    }
    codebook = fsq.codebook()
    assert codebook.shape == (1000, 16)
    grid = fsq.indices_to_grid(torch.arange(1000))
    assert torch.allclose(codebook, fsq.project_out(grid))
    z = torch.randn(2, 64, 16, requires_grad=True)
    out = fsq(z)
    assert torch.allclose(out.quantized, codebook[out.indices], atol=1e-6)
    out.quantized.sum().backward()
    assert z.grad.abs().sum() > 0 and fsq.project_in.weight.grad.abs().sum() > 0
    assert FSQuantizer(levels=[8, 5, 5, 5]).state_dict() == {}  # no projection: nothing to learn


def test_bad_levels_are_explained():
    with pytest.raises(ValueError, match="levels"):
        FSQConfig(levels=[8, 1])
    with pytest.raises(ValueError, match="levels"):
        FSQConfig(levels=[])
    with pytest.raises(ValueError, match=r"shape \(\.\.\., N, 4\)"):
        FSQuantizer()(torch.zeros(1, 3, 16))
