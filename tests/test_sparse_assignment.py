"""The certified candidate-list solver and the tiled ``assign_codes``: scipy's optimum, or an honest
"not certified" that the dense solver then answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from tokenkit.ops.assignment import assign, assign_codes, code_costs
from tokenkit.ops.sparse_assignment import MIN_CODES, WIDTH, Attempts, solve_sparse


def latents_and_codes(b: int, n: int, k: int, d: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g) * spread, torch.randn(k, d, generator=g)


def scipy_totals(cost: np.ndarray) -> np.ndarray:
    out = []
    for matrix in cost.astype(np.float64):
        rows, cols = linear_sum_assignment(matrix)
        out.append(matrix[rows, cols].sum())
    return np.array(out)


def totals(cost: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return np.take_along_axis(cost.astype(np.float64), columns[:, :, None], axis=2).sum((1, 2))


@pytest.mark.parametrize("n, k", [(64, 256), (100, 300), (256, 1024), (1, 512)])
def test_well_spread_matrices_certify_and_are_optimal(n: int, k: int) -> None:
    z, e = latents_and_codes(6, n, k, 16, 1.0, seed=n + k)
    cost = code_costs(z, e).numpy()
    columns, certified = solve_sparse(cost, threads=2)
    assert certified.all()  # well-spread latents: the candidate lists suffice
    for row in columns:
        assert len(set(row.tolist())) == n and 0 <= row.min() and row.max() < k
    np.testing.assert_allclose(totals(cost, columns), scipy_totals(cost), rtol=1e-6, atol=1e-4)


def test_square_problems_are_exact_through_the_fallback() -> None:
    z, e = latents_and_codes(3, 256, 256, 16, 1.0, seed=9)  # N == K: every row must go deep
    cost = code_costs(z, e)
    columns = assign(cost, "sparse")
    assert all((row.sort().values == torch.arange(256)).all() for row in columns)
    np.testing.assert_allclose(totals(cost.numpy(), columns.numpy()), scipy_totals(cost.numpy()), rtol=1e-6)


def test_contended_latents_are_not_certified_and_the_dense_solver_answers() -> None:
    z, e = latents_and_codes(4, 128, 512, 16, 0.05, seed=3)
    cost = code_costs(z, e)
    _, certified = solve_sparse(cost.numpy())
    assert not certified.any()
    columns = assign(cost, "sparse")
    np.testing.assert_allclose(totals(cost.numpy(), columns.numpy()), scipy_totals(cost.numpy()), rtol=1e-6)


def test_ties_and_overflowing_lists_stay_exact() -> None:
    # integer costs in a tiny range: hundreds of ties per row, so lists overflow WIDTH and get cut
    g = np.random.default_rng(0)
    cost = g.integers(0, 4, size=(5, 40, 512)).astype(np.float32)
    columns, certified = solve_sparse(cost)
    assert certified.any()
    np.testing.assert_allclose(totals(cost, columns)[certified], scipy_totals(cost)[certified])
    full = assign(torch.from_numpy(cost), "sparse").numpy()
    np.testing.assert_allclose(totals(cost, full), scipy_totals(cost))
    # constant rows (padding) tie everywhere: more of them than a list holds
    cost[:, : WIDTH + 8] = 0.0
    full = assign(torch.from_numpy(cost), "sparse").numpy()
    np.testing.assert_allclose(totals(cost, full), scipy_totals(cost))
    assert all(len(set(row.tolist())) == 40 for row in full)


def test_an_optimum_far_down_its_rows_is_found() -> None:
    # every row's cheapest columns are the same 8: all but 8 rows must go deep into their rows
    g = np.random.default_rng(1)
    cost = g.uniform(10.0, 11.0, size=(3, 32, 512)).astype(np.float32)
    cost[:, :, :8] = g.uniform(0.0, 1.0, size=(3, 32, 8))
    columns = assign(torch.from_numpy(cost), "sparse").numpy()
    np.testing.assert_allclose(totals(cost, columns), scipy_totals(cost), rtol=1e-6)


def test_narrow_problems_are_left_to_the_dense_solver() -> None:
    cost = np.random.default_rng(2).normal(size=(2, 8, MIN_CODES - 1)).astype(np.float32)
    _, certified = solve_sparse(cost)
    assert not certified.any()


def test_attempts_give_up_on_a_failing_batch_after_the_probe() -> None:
    attempts = Attempts(probe=4)
    attempts.record(np.array([True, False]))
    assert attempts.worth_trying()  # still probing
    attempts.record(np.array([False, False]))
    assert not attempts.worth_trying()  # 1 of 4 certified
    good = Attempts(probe=4)
    good.record(np.array([True, True, False, True]))
    assert good.worth_trying()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("spread", [1.0, 0.05])
def test_assign_codes_tiled_matches_the_dense_optimum(threads: int, spread: float) -> None:
    z, e = latents_and_codes(7, 64, 256, 16, spread, seed=4)  # 7: an odd last tile
    tiled = assign_codes(z, e, backend="sparse", threads=threads)
    dense = assign_codes(z, e, backend="lapx")
    cost = code_costs(z, e).numpy()
    np.testing.assert_allclose(totals(cost, tiled.numpy()), totals(cost, dense.numpy()), rtol=1e-6)
    np.testing.assert_allclose(totals(cost, tiled.numpy()), scipy_totals(cost), rtol=1e-6)
    assert all(row.unique().numel() == 64 for row in tiled)


def test_assign_codes_restores_torch_threads_and_honours_masks() -> None:
    before = torch.get_num_threads()
    z, e = latents_and_codes(4, 32, 256, 8, 1.0, seed=5)
    mask = torch.ones(4, 32, dtype=torch.bool)
    mask[1, 20:] = False
    mask[3, 5:] = False
    got = assign_codes(z, e, mask, backend="sparse", threads=2)
    assert torch.get_num_threads() == before
    cost = code_costs(z, e, mask).numpy()
    assert (cost[3, 5:] == 0).all()
    np.testing.assert_allclose(totals(cost, got.numpy()), scipy_totals(cost), rtol=1e-6)


def test_assign_codes_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"latents \(B, N, D\) and a codebook \(K, D\)"):
        assign_codes(torch.zeros(2, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="N <= K"):
        assign_codes(torch.zeros(1, 9, 3), torch.zeros(4, 3))


def test_auto_falls_back_to_a_dense_solver_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from tokenkit.ops import assignment

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "numba" else real(name))
    assert assignment._sparse_or_dense() == "lapx"
    z, e = latents_and_codes(2, 16, 256, 8, 1.0, seed=6)
    cost = code_costs(z, e).numpy()
    np.testing.assert_allclose(totals(cost, assign_codes(z, e).numpy()), scipy_totals(cost), rtol=1e-6)


@pytest.mark.parametrize("k", [256, 300])  # 300: a partial last group
def test_every_dropped_entry_costs_at_least_the_virtual_cost(k: int) -> None:
    from tokenkit.ops import sparse_assignment as sa

    n = 40
    cost = np.random.default_rng(k).normal(size=(n, k)).astype(np.float32)
    cost[3, :5] = cost[3].min()  # ties within a row
    g = sa.GROUPS
    lists = sa.Lists(np.empty((n, g), np.float32), np.empty((n, g), np.int32), np.empty((n, g), np.float32),
                     np.empty(n), np.empty(n, np.int64), np.empty(n), np.empty(n), np.empty(n, np.int64),
                     np.empty((n, sa.WIDTH + 1), np.int64), np.empty((n, sa.WIDTH + 1)))
    sa._group_statistics(cost, lists)
    np.testing.assert_array_equal(lists.row_min, cost.min(1))
    sa._lists_from_groups(0.5, k, lists)
    for i in range(n):
        count = lists.count[i]
        kept, virtual = lists.cols[i, : count - 1], lists.cols[i, count - 1]
        assert virtual == k + i and lists.vals[i, count - 1] == lists.bound[i]
        np.testing.assert_array_equal(lists.vals[i, : count - 1], cost[i, kept])
        assert cost[i, lists.argmin[i]] == cost[i].min()
        dropped = np.setdiff1d(np.arange(k), kept)
        assert cost[i, dropped].min() >= lists.bound[i]
        assert (cost[i, kept] <= lists.row_min[i] + 0.5).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_an_error_not_a_crash(bad: float) -> None:
    z, e = latents_and_codes(3, 40, 300, 8, 1.0, seed=7)
    cost = code_costs(z, e)
    cost[0, 5, :] = bad  # a whole row
    cost[1, :, 7] = bad  # a whole column
    cost[2] = bad
    solve_sparse(cost.numpy())  # undefined answers, but no crash and no hang
    with pytest.raises(ValueError, match="NaN/inf entries"):
        assign(cost, "sparse")
    e_bad = e.clone()
    e_bad[3, 0] = bad
    with pytest.raises(ValueError, match="NaN/inf values in its codebook"):
        assign_codes(z, e_bad)
