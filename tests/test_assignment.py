"""The batched exact assignment solver: distinct columns, scipy's optimal cost, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from tokenkit.ops.assignment import assign, auction, candidate_columns, certification_tolerance, dual_gap

BACKENDS = ["sparse", "lapx", "scipy", "auction", "auto"]


def squared_distance_cost(b: int, n: int, k: int, d: int, spread: float, seed: int) -> torch.Tensor:
    """``C_ik = |e_k|^2 - 2 z_i . e_k`` with ``z ~ N(0, spread^2 I)`` and ``e ~ N(0, I)``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, n, d, generator=g) * spread
    e = torch.randn(k, d, generator=g)
    return torch.baddbmm(e.square().sum(1), z, e.t().expand(b, d, k), alpha=-2.0)


def scipy_optimum(cost: torch.Tensor) -> np.ndarray:
    totals = []
    for matrix in cost.double().numpy():
        rows, cols = linear_sum_assignment(matrix)
        totals.append(matrix[rows, cols].sum())
    return np.array(totals)


def total_cost(cost: torch.Tensor, columns: torch.Tensor) -> np.ndarray:
    return cost.double().gather(2, columns.unsqueeze(2)).sum((1, 2)).numpy()


REGIMES = {"well-spread": 1.0, "contended": 0.1}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("regime", list(REGIMES))
def test_distinct_columns_and_optimal_cost(backend: str, regime: str) -> None:
    cost = squared_distance_cost(6, 24, 48, 8, REGIMES[regime], seed=1)
    columns = assign(cost, backend)
    assert columns.dtype == torch.long and tuple(columns.shape) == (6, 24)
    for row in columns:
        assert row.unique().numel() == 24, "columns of one matrix must be distinct"
    assert int(columns.min()) >= 0 and int(columns.max()) < 48
    np.testing.assert_allclose(total_cost(cost, columns), scipy_optimum(cost), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_square_and_single_column_problems(backend: str) -> None:
    cost = squared_distance_cost(3, 10, 10, 4, 1.0, seed=2)  # N == K: a permutation
    columns = assign(cost, backend)
    assert (columns.sort(1).values == torch.arange(10)).all()
    np.testing.assert_allclose(total_cost(cost, columns), scipy_optimum(cost), rtol=1e-6, atol=1e-5)
    one = torch.randn(2, 1, 1)
    assert assign(one, backend).tolist() == [[0], [0]]


def test_known_small_problem() -> None:
    # greedy row by row gives row 0 column 0 (cost 1) and row 1 column 2 (90): 91 in all;
    # the optimum is row 0 -> column 1 and row 1 -> column 0: 2 + 0.5.
    cost = torch.tensor([[[1.0, 2.0, 50.0], [0.5, 100.0, 90.0]]])
    for backend in BACKENDS:
        assert assign(cost, backend).tolist() == [[1, 0]], backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_rows_than_columns_is_a_clear_error(backend: str) -> None:
    with pytest.raises(ValueError, match="N <= K"):
        assign(torch.zeros(2, 5, 4), backend)


def test_bad_input_errors() -> None:
    with pytest.raises(ValueError, match=r"\(B, N, K\)"):
        assign(torch.zeros(5, 8))
    with pytest.raises(TypeError, match="floating-point"):
        assign(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown assignment backend"):
        assign(torch.zeros(1, 2, 3), "hungarian")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batches(backend: str) -> None:
    assert tuple(assign(torch.zeros(0, 3, 5), backend).shape) == (0, 3)
    assert tuple(assign(torch.zeros(2, 0, 5), backend).shape) == (2, 0)


def test_grad_requiring_cost_is_accepted() -> None:
    cost = squared_distance_cost(2, 4, 8, 3, 1.0, seed=3).requires_grad_(True)
    columns = assign(cost)
    np.testing.assert_allclose(total_cost(cost.detach(), columns), scipy_optimum(cost.detach()), rtol=1e-6)


@pytest.mark.parametrize("regime", list(REGIMES))
def test_auction_alone_is_within_n_eps_and_certified(regime: str) -> None:
    """Without the host fallback: eps-CS bound, the duality gap, and the optimum when N*eps is tiny."""
    cost = squared_distance_cost(4, 16, 40, 6, REGIMES[regime], seed=4)
    optimum = scipy_optimum(cost)
    tol = certification_tolerance(cost)
    fine = auction(cost, eps=tol / 32, max_rounds=100_000)
    assert bool(fine.finished.all())
    gap = dual_gap(cost, fine.assignment, fine.prices)
    assert bool((gap >= -1e-6).all()) and bool((gap <= tol).all()), "certificate: gap within f32 resolution"
    np.testing.assert_allclose(total_cost(cost, fine.assignment), optimum, rtol=1e-6, atol=1e-5)
    # a coarse eps finishes faster; its result is within N * eps of the optimum and its gap says so
    eps = 0.05 * float(cost.std())
    coarse = auction(cost, eps=eps, max_rounds=100_000)
    excess = total_cost(cost, coarse.assignment) - optimum
    assert (excess >= -1e-6).all() and (excess <= 16 * eps + 1e-6).all()
    coarse_gap = dual_gap(cost, coarse.assignment, coarse.prices).numpy()
    assert (coarse_gap >= excess - 1e-6).all(), "the duality gap bounds the true excess"
    assert coarse.rounds < fine.rounds
    for row in coarse.assignment:
        assert row.unique().numel() == 16


def test_unfinished_auction_falls_back_to_the_exact_host_solver() -> None:
    cost = squared_distance_cost(5, 20, 30, 6, 0.1, seed=5)
    partial = auction(cost, eps=certification_tolerance(cost) / 40, max_rounds=2)
    assert not bool(partial.finished.all())
    assert bool(torch.isinf(dual_gap(cost, partial.assignment, partial.prices)).any())
    columns = assign(cost, "auction", max_rounds=2)
    np.testing.assert_allclose(total_cost(cost, columns), scipy_optimum(cost), rtol=1e-6, atol=1e-5)
    for row in columns:
        assert row.unique().numel() == 20


def test_column_reduction_keeps_an_optimum_and_drops_columns_only_when_contended() -> None:
    contended = squared_distance_cost(3, 64, 256, 16, 0.1, seed=6)
    columns = candidate_columns(contended)
    assert columns is not None and columns.shape[1] < 0.75 * 256
    for b in range(3):
        _, optimal = linear_sum_assignment(contended[b].double().numpy())
        assert set(optimal.tolist()) <= set(columns[b].tolist()), "every optimal column survives"
    for backend in BACKENDS:
        found = total_cost(contended, assign(contended, backend))
        np.testing.assert_allclose(found, scipy_optimum(contended), rtol=1e-6)
    well_spread = squared_distance_cost(3, 64, 256, 16, 1.0, seed=6)
    assert candidate_columns(well_spread) is None
