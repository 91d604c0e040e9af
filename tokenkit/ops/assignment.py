"""Batched exact rectangular linear assignment: each row of a cost matrix takes a distinct column.

For a batch of costs ``C`` of shape ``(B, N, K)`` with ``N <= K``, :func:`assign` returns, per
matrix, the injective map ``sigma: rows -> columns`` minimising ``sum_i C[i, sigma(i)]`` (the linear
sum assignment problem). Matching quantization calls :func:`assign_codes` once per training step,
which makes the ``(images, latents, codes)`` squared-distance costs itself, so the solve must be
exact, batched and never pad to ``K x K``.

Backends (``backend=``):

- ``"sparse"``: the certified candidate-list solver of :mod:`tokenkit.ops.sparse_assignment`
  (numba): each row keeps the few columns near its minimum plus a private virtual column priced
  at the cheapest one it dropped; a solution of that small problem that uses no virtual column is
  provably optimal for the whole matrix. Matrices it cannot certify (latents contending for the
  same codes) go to the dense host solver. On 64 x 256 x 1024 well-spread batches it took
  9.2-9.5 ms against lapx's 13.8-14.1 ms on a given cost; inside :func:`assign_codes`, which never
  holds the whole cost, a matching training step fell from 1.56-1.73x to 1.15-1.34x a
  nearest-neighbour step (``benchmarks/matching.py``, 2 cores, docs/pivq.md).
- ``"lapx"``: ``lap.lapjvh_batch`` from lapx >= 0.11, a Jonker-Volgenant solver with a native
  rectangular path that releases the GIL and runs the batch over ``os.cpu_count()`` threads; the
  float32 cost is passed as a zero-copy numpy view.
- ``"scipy"``: ``scipy.optimize.linear_sum_assignment`` (Crouse 2016, rectangular, releases the GIL)
  per matrix in a thread pool. The fallback when lapx is not installed.
- ``"auction"``: a batched Jacobi forward auction (Bertsekas 1988, "The auction algorithm: a
  distributed relaxation method") in plain torch, for costs that live on a GPU. It also runs on
  CPU tensors, which is how it is tested. Its certificate and fallback policy are below.
- ``"auto"``: CUDA costs -> ``"auction"``; CPU costs -> ``"sparse"`` if numba is installed, else
  ``"lapx"`` if importable, else ``"scipy"``.

Before a dense backend, :func:`candidate_columns` drops the columns no optimal assignment can use
(an exact column reduction): when every row wants the same codes (contended latents) well over half
of the K columns go, and the solve is about 1.4x cheaper; for well-spread latents it costs one probe
of the first matrix and changes nothing.

Auction policy (the ``"auction"`` backend, and ``"auto"`` on CUDA):

1. Solve in float64 with one phase from zero prices and ``eps = tol / (2 N)``, where
   ``tol = N * 2**-22 * max|C|`` is the float32 resolution of a total cost (a sum of N entries,
   each known to about 4 ulps). A finished forward auction is within ``N * eps = tol / 2`` of the
   optimum (eps-complementary slackness; unassigned columns keep price 0).
2. Certify each matrix with the primal-dual bound: ``LB = sum_i min_j (C_ij + p_j) - sum_j p_j``
   is a lower bound on every assignment's cost when prices ``p >= 0``; the matrix is accepted when
   ``cost(sigma) - LB <= tol``, i.e. the assignment is optimal to the precision of its float32 cost.
3. Matrices the auction did not finish within ``max_rounds`` (default 300) or that fail the
   certificate are copied to the host and solved exactly there (lapx, else scipy). Measured on CPU
   at B=4, N=256, K=1024: well-spread costs finish and certify in 10 rounds; contended ones need
   about 1400 rounds (after column reduction), where the host solver is the better tool, so the
   cap sends them there early. The answer is therefore always the exact optimum at float32
   resolution; the GPU only decides how much of the batch the host has to do.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tokenkit.ops import all_finite
from tokenkit.ops.nearest import augmented_codebook

BACKENDS = ("auto", "sparse", "lapx", "scipy", "auction")
#: float32 rounding of one cost entry, taken as 4 ulps (2**-22) of the largest |entry|
_F32_RESOLUTION = 2.0**-22


def assign(
    cost: Tensor, backend: str = "auto", *, max_rounds: int = 300, threads: int | None = None
) -> Tensor:
    """Exact batched rectangular assignment.

    cost: ``(B, N, K)`` float tensor with ``N <= K`` and finite entries (not checked: NaN gives
    undefined results). Returns a ``LongTensor (B, N)`` on ``cost``'s device: row ``i`` of matrix
    ``b`` takes column ``out[b, i]``; the columns of one matrix are distinct and their total cost
    is minimal. ``max_rounds`` bounds the auction (``"auction"`` backend / CUDA) before the host
    solver takes over the unfinished matrices; ``threads`` caps the host solver's worker threads
    (default ``os.cpu_count()``).
    """
    _check_cost(cost)
    if backend not in BACKENDS:
        raise ValueError(f"unknown assignment backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        backend = "auction" if cost.is_cuda else _sparse_or_dense()
    cost = cost.detach()
    b, n, _ = cost.shape
    if b == 0 or n == 0:
        return torch.empty(b, n, dtype=torch.long, device=cost.device)
    if backend == "sparse":
        return _solve_sparse_first(cost, threads)
    return _solve_reduced(cost, backend, max_rounds, threads)


def _solve_reduced(cost: Tensor, backend: str, max_rounds: int = 300, threads: int | None = None) -> Tensor:
    """A dense backend on the columns an optimum can use (:func:`candidate_columns`), mapped back."""
    b, n, _ = cost.shape
    columns = candidate_columns(cost)
    if columns is not None:  # solve on the columns an optimum can use, then map back
        cost = cost.gather(2, columns.unsqueeze(1).expand(b, n, columns.shape[1])).contiguous()
    if backend == "auction":
        out = _auction_certified(cost, max_rounds, threads)
    else:
        out = _solve_on_host(cost, backend, threads).to(cost.device)
    return out if columns is None else columns.gather(1, out)


def _solve_sparse_first(cost: Tensor, threads: int | None = None) -> Tensor:
    """The ``"sparse"`` backend: certified candidate-list solves, dense host solves for the rest."""
    from tokenkit.ops.sparse_assignment import solve_sparse

    threads = threads or os.cpu_count() or 1
    host = cost.to("cpu", torch.float32).contiguous()
    columns, certified = solve_sparse(host.numpy(), threads)

    def costs_of(matrices: Tensor | None) -> Tensor:
        return host if matrices is None else host[matrices]

    return _dense_for_uncertified(columns, certified, costs_of, threads).to(cost.device)


@torch.no_grad()
def assign_codes(
    z: Tensor,
    codebook: Tensor,
    mask: Tensor | None = None,
    backend: str = "auto",
    *,
    max_rounds: int = 300,
    threads: int | None = None,
) -> Tensor:
    """Distinct codes for the latents of every sample, with minimal total squared distance.

    ``z (B, N, D)``, ``codebook (K, D)``, ``N <= K``; ``mask (B, N)`` bool marks the valid latents
    (padded rows get a constant cost, which leaves the valid rows' optimum unchanged). Returns
    ``(B, N)`` code indices: the assignment of :func:`assign` on the costs
    ``C_ik = |e_k|^2 - 2 z_i . e_k`` (the ``|z_i|^2`` term is constant per row).

    On CPU with the ``"sparse"`` backend (``"auto"`` when numba is there) the costs are never held
    whole: each worker thread makes a tile of cost matrices (about :data:`TILE_BYTES`) with one GEMM
    and runs the certified candidate-list solver on it while it is in cache. Matrices it cannot certify
    are solved densely afterwards. Other backends get the whole ``(B, N, K)`` cost.
    """
    if z.dim() != 3 or codebook.dim() != 2 or z.shape[2] != codebook.shape[1]:
        raise ValueError(
            f"assign_codes expects latents (B, N, D) and a codebook (K, D), got {tuple(z.shape)} and "
            f"{tuple(codebook.shape)}"
        )
    if backend not in BACKENDS:
        raise ValueError(f"unknown assignment backend {backend!r}; choose one of {BACKENDS}")
    b, n, _ = z.shape
    _check_rows_fit(n, codebook.shape[0])
    for name, values in (("latents", z), ("codebook", codebook)):
        if not all_finite(values):
            raise ValueError(
                f"assign_codes got NaN/inf values in its {name}; the assignment needs finite costs. "
                f"Check the encoder output and the learning rate (a diverged codebook shows up here too)."
            )
    if backend == "auto":
        backend = "auction" if z.is_cuda else _sparse_or_dense()
    if backend == "sparse" and not z.is_cuda and b > 0 and n > 0:
        return _assign_codes_tiled(z, codebook, mask, threads)
    return assign(code_costs(z, codebook, mask), backend, max_rounds=max_rounds, threads=threads)


@torch.no_grad()
def code_costs(z: Tensor, codebook: Tensor, mask: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """``(B, N, K)`` costs ``|e_k|^2 - 2 z_i . e_k`` as one plain GEMM ``[z, 1] @ [-2e, |e|^2]^T`` (no
    broadcast pass for the bias); padded rows (``mask`` False) are set to 0. ``out``: a float32
    ``(B, N, K)`` buffer to write into."""
    b, n, _ = z.shape
    if out is None:
        out = torch.empty(b, n, codebook.shape[0], dtype=torch.float32, device=z.device)
    return _costs_into(out, _with_ones(z.reshape(b * n, -1)), augmented_codebook(codebook), mask)


def _costs_into(out: Tensor, rows: Tensor, codes: Tensor, mask: Tensor | None) -> Tensor:
    """``out (B, N, K) = rows @ codes`` for ``rows = [z, 1]`` ``(B N, D + 1)`` and ``codes =
    [-2e, |e|^2]^T``; padded rows (``mask`` False) get the constant cost 0."""
    b, n, k = out.shape
    torch.mm(rows, codes, out=out.view(b * n, k))
    if mask is not None:
        out.masked_fill_(~mask.reshape(b, n, 1), 0.0)
    return out


#: bytes of cost per tile in :func:`assign_codes` (two 256 x 1024 matrices: stays in L2)
TILE_BYTES = 2 * 2**20
#: tiles a worker thread must have before a second one pays for itself
MIN_TILES_PER_WORKER = 8


def _assign_codes_tiled(z: Tensor, codebook: Tensor, mask: Tensor | None, threads: int | None) -> Tensor:
    """The CPU ``"sparse"`` path of :func:`assign_codes`: tiles made and solved by each worker."""
    from tokenkit.ops.sparse_assignment import Attempts, solve_sparse_into

    b, n, _ = z.shape
    k = codebook.shape[0]
    rows = _with_ones(z.detach().reshape(b * n, -1))
    codes = augmented_codebook(codebook.detach())
    columns = np.zeros((b, n), dtype=np.int64)
    certified = np.zeros(b, dtype=np.bool_)
    attempts = Attempts()
    per_tile = max(1, TILE_BYTES // (4 * n * k))
    starts = iter(range(0, b, per_tile))  # shared by the workers: next() is atomic under the GIL

    def work() -> None:
        tile = torch.empty(min(per_tile, b), n, k, dtype=torch.float32)
        for start in starts:
            if not attempts.worth_trying():
                return
            stop = min(b, start + per_tile)
            tile_mask = None if mask is None else mask[start:stop]
            cost = _costs_into(tile[: stop - start], rows[start * n : stop * n], codes, tile_mask)
            solve_sparse_into(cost.numpy(), columns[start:stop], certified[start:stop])
            attempts.record(certified[start:stop])

    tiles = -(-b // per_tile)
    _run_on_threads(work, min(threads or os.cpu_count() or 1, max(1, tiles // MIN_TILES_PER_WORKER)))

    def costs_of(samples: Tensor | None) -> Tensor:
        if samples is None:
            return code_costs(z.detach(), codebook.detach(), mask)
        return code_costs(z.detach()[samples], codebook.detach(), None if mask is None else mask[samples])

    return _dense_for_uncertified(columns, certified, costs_of, threads)


def _dense_for_uncertified(
    columns: np.ndarray,
    certified: np.ndarray,
    costs_of: Callable[[Tensor | None], Tensor],
    threads: int | None,
) -> Tensor:
    """``columns`` where the sparse solver certified them; the dense host solver for the other matrices,
    on ``costs_of(mask)`` of them (``costs_of(None)``: all of them, when none certified: no re-indexing)."""
    if not certified.any():  # contended latents: the dense solver on all of them
        return _solve_reduced(costs_of(None), _host_backend(), threads=threads)
    out = torch.from_numpy(columns)
    if not certified.all():  # ... or on the rest
        rest = torch.from_numpy(~certified)
        out[rest] = _solve_reduced(costs_of(rest), _host_backend(), threads=threads)
    return out


def _run_on_threads(work: Callable[[], None], workers: int) -> None:
    """Run ``work()`` on ``workers`` threads with one torch thread each, then restore torch's count.

    Each worker's GEMMs then run on its own core. With torch's default intra-op threads instead,
    OpenMP workers spin-wait after every GEMM on the cores the solver needs (measured: 14 ms against
    22 ms for GEMM + solve of 64 x 256 x 1024 on 2 cores). The threads are kept between calls.
    """
    from tokenkit.ops.sparse_assignment import run_on_workers

    if workers <= 1:
        work()
        return
    saved = torch.get_num_threads()

    def one_thread_work() -> None:
        torch.set_num_threads(1)
        work()

    try:
        run_on_workers(one_thread_work, workers)
    finally:
        torch.set_num_threads(saved)


def _with_ones(x: Tensor) -> Tensor:
    """``[x, 1]`` in float32, so that one GEMM adds the bias column."""
    return torch.cat([x.float(), x.new_ones(x.shape[0], 1, dtype=torch.float32)], dim=1)


@torch.no_grad()
def candidate_columns(cost: Tensor, max_fraction: float = 0.75) -> Tensor | None:
    """Columns that suffice for an optimal assignment, ``(B, K')`` sorted, or None if most are needed.

    Column reduction: let ``t_i`` be any value >= the N-th smallest cost of row ``i``. In an optimal
    assignment every row ``i`` takes a column with ``C_ij <= t_i``: otherwise at least N of its
    columns are cheaper, at most N - 1 of them are taken by the other rows, and moving ``i`` to a
    free one lowers the total. So the columns ``{j : C_ij <= t_i for some i}`` hold an optimum.
    Here ``t_i`` is the N-th smallest of row ``i`` over ``S``, the ``N + N/8`` columns cheapest for
    the mean row (any N columns bound the N-th smallest; a few spare ones tighten the bound). When
    latents contend for the same codes this keeps under half of the K columns and the solve gets
    cheaper; for well-spread latents nearly every column stays, which a probe of the first matrix
    detects, and the batch is solved whole.
    """
    b, n, k = cost.shape
    spare = min(n // 8, k - n)
    if b == 0 or n == 0 or n == k:
        return None
    if _probe_keeps(cost[0], spare) > max_fraction * k:
        return None
    keep = _keep_mask(cost, spare)
    width = int(keep.sum(1).max())
    if width > max_fraction * k:
        return None
    # kept columns first (in index order), padded with dropped ones: extra columns never hurt
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :width]
    return order.sort(dim=1).values


def _probe_keeps(cost: Tensor, spare: int) -> int:
    """How many columns :func:`_keep_mask` keeps for one ``(N, K)`` matrix.

    On CPU this runs in numpy, single-threaded: a torch op here would leave torch's OpenMP workers
    spin-waiting on the cores the host solver is about to use (measured: +3.8 ms on a 7 ms solve
    of 64 x 256 x 1024 on 2 cores).
    """
    if cost.device.type != "cpu":
        return int(_keep_mask(cost[None], spare).sum())
    c = cost.float().numpy()
    n = c.shape[0]
    subset = np.argpartition(c.mean(axis=0), n + spare - 1)[: n + spare]  # S
    bound = np.partition(c[:, subset], n - 1, axis=1)[:, n - 1 : n]  # t_i: N-th smallest over S
    return int((c <= bound).any(axis=0).sum())


def _keep_mask(cost: Tensor, spare: int) -> Tensor:
    """``(B, K)``: columns ``j`` with ``C_ij <= t_i`` for some row ``i`` (see :func:`candidate_columns`)."""
    n = cost.shape[1]
    subset = cost.mean(dim=1).topk(n + spare, dim=1, largest=False).indices  # S
    on_subset = cost.gather(2, subset.unsqueeze(1).expand(-1, n, -1))  # (B, N, N + spare)
    bound = on_subset.topk(spare + 1, dim=2).values[:, :, -1:]  # t_i: N-th smallest over S
    return (cost <= bound).any(dim=1)


def _check_cost(cost: Tensor) -> None:
    if not isinstance(cost, Tensor) or not cost.is_floating_point():
        raise TypeError("assign expects a floating-point torch.Tensor of costs (B, N, K)")
    if cost.dim() != 3:
        raise ValueError(
            f"assign expects a batch of cost matrices (B, N, K), got shape {tuple(cost.shape)}; "
            f"add a batch dimension with cost.unsqueeze(0)"
        )
    _check_rows_fit(cost.shape[1], cost.shape[2])


def _check_rows_fit(n: int, k: int) -> None:
    if n > k:
        raise ValueError(
            f"cannot give {n} rows distinct columns out of only {k}: each row needs its own column, "
            f"so N <= K is required. Use a codebook of at least {n} codes or fewer latents per sample."
        )


def _sparse_or_dense() -> str:
    """``"sparse"`` when numba is installed (it compiles the candidate-list solver), else a dense one."""
    return "sparse" if importlib.util.find_spec("numba") is not None else _host_backend()


def _host_backend() -> str:
    try:
        import lap  # noqa: F401
    except ImportError:
        return "scipy"
    return "lapx" if hasattr(lap, "lapjvh_batch") else "scipy"


def _solve_on_host(cost: Tensor, backend: str, threads: int | None = None) -> Tensor:
    """Exact solve of every matrix on the CPU; returns a CPU LongTensor (B, N)."""
    threads = threads or os.cpu_count() or 1
    host = cost.to("cpu", torch.float32).contiguous()
    array = host.numpy()  # zero-copy view of the float32 cost
    if backend == "lapx":
        import lap

        # lapjvh: lapjvr's Rust solver plus a C++ completion; ~1.4x faster than lapjvr_batch on
        # well-spread batches here (benchmarks/matching.py), the same on contended ones
        try:
            _, cols = lap.lapjvh_batch(array, extend_cost=True, return_cost=False, n_threads=threads)
        except ValueError as error:
            if not np.isfinite(array).all():
                raise ValueError(
                    "assign got NaN/inf entries in its cost matrices; the assignment needs finite costs"
                ) from error
            raise
    elif backend == "scipy":
        cols = _scipy_batch(array, threads)
    else:
        raise ValueError(f"{backend!r} is not a host backend; use 'lapx' or 'scipy'")
    return torch.from_numpy(np.stack(cols).astype(np.int64, copy=False))


def _scipy_batch(array: np.ndarray, threads: int) -> list[np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    def solve(matrix: np.ndarray) -> np.ndarray:
        rows, cols = linear_sum_assignment(matrix)  # rows come back sorted: 0..N-1 when N <= K
        return cols

    workers = min(threads, len(array))
    if workers <= 1:
        return [solve(m) for m in array]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(solve, array))


# -- the auction (GPU path, runs on any device) ---------------------------------------------------
@dataclass
class AuctionResult:
    """assignment: ``(B, N)`` columns (-1 where a row is still unassigned); prices: ``(B, K)`` float64;
    finished: ``(B,)`` bool, every row assigned; rounds: bidding rounds run."""

    assignment: Tensor
    prices: Tensor
    finished: Tensor
    rounds: int


def certification_tolerance(cost: Tensor) -> Tensor:
    """Per matrix, the float32 resolution of a total cost: ``N * 2**-22 * max|C|`` (float64, ``(B,)``)."""
    n = cost.shape[1]
    return n * _F32_RESOLUTION * cost.detach().abs().amax(dim=(1, 2)).double().clamp_min(1e-30)


@torch.no_grad()
def auction(cost: Tensor, eps: Tensor | float, max_rounds: int = 1000) -> AuctionResult:
    """Batched Jacobi forward auction for ``min sum_i C[i, sigma(i)]``, one phase from zero prices.

    Each round every unassigned row ``i`` finds its best column ``j1 = argmin_j (C_ij + p_j)`` with
    value ``w1`` and the second best value ``w2``, and bids ``p_j1 + (w2 - w1) + eps``; each column
    goes to its highest bidder, whose displaced owner bids again next round. Rows keep
    eps-complementary slackness, so a finished auction is within ``N * eps`` of the optimum.
    ``eps`` is a float or a per-matrix ``(B,)`` tensor. Runs in float64 (prices grow by steps far
    below float32 resolution).
    """
    c = cost.detach().double()
    bsz, n, k = c.shape
    dev = c.device
    eps_t = torch.as_tensor(eps, dtype=torch.float64, device=dev).expand(bsz).contiguous()
    if k == 1:  # N <= 1: the only column
        assignment = torch.zeros(bsz, n, dtype=torch.long, device=dev)
        return AuctionResult(assignment, torch.zeros(bsz, k, dtype=torch.float64, device=dev),
                             torch.ones(bsz, dtype=torch.bool, device=dev), 0)
    prices = torch.zeros(bsz, k, dtype=torch.float64, device=dev)
    owner = torch.full((bsz, k), -1, dtype=torch.long, device=dev)
    assignment = torch.full((bsz, n), -1, dtype=torch.long, device=dev)
    rounds = 0
    while rounds < max_rounds:
        bidders = (assignment < 0).nonzero()  # (M, 2): (matrix, row)
        if bidders.shape[0] == 0:
            break
        rounds += 1
        bi, ri = bidders[:, 0], bidders[:, 1]
        net = c[bi, ri] + prices[bi]  # (M, K)
        best = net.topk(2, dim=1, largest=False)
        w1, w2, j1 = best.values[:, 0], best.values[:, 1], best.indices[:, 0]
        bid = prices[bi, j1] + (w2 - w1) + eps_t[bi]
        # each column goes to its highest bid; ties go to the lowest row index
        flat = bi * k + j1
        top = torch.full((bsz * k,), -torch.inf, dtype=torch.float64, device=dev)
        top.scatter_reduce_(0, flat, bid, reduce="amax")
        is_top = bid == top[flat]
        first = torch.full((bsz * k,), n, dtype=torch.long, device=dev)
        first.scatter_reduce_(0, flat[is_top], ri[is_top], reduce="amin")
        wins = is_top & (ri == first[flat])
        wb, wr, wj = bi[wins], ri[wins], j1[wins]
        displaced = owner[wb, wj]
        had_owner = displaced >= 0
        assignment[wb[had_owner], displaced[had_owner]] = -1
        owner[wb, wj] = wr
        assignment[wb, wr] = wj
        prices[wb, wj] = bid[wins]
    finished = (assignment >= 0).all(dim=1)
    return AuctionResult(assignment, prices, finished, rounds)


def dual_gap(cost: Tensor, assignment: Tensor, prices: Tensor) -> Tensor:
    """``cost(sigma) - LB`` per matrix (float64 ``(B,)``), with the lower bound
    ``LB = sum_i min_j (C_ij + p_j) - sum_j p_j`` valid for any prices ``p >= 0`` (weak duality).
    Rows still unassigned (``-1``) make the gap ``+inf``."""
    c = cost.detach().double()
    complete = (assignment >= 0).all(dim=1)
    primal = c.gather(2, assignment.clamp_min(0).unsqueeze(2)).squeeze(2).sum(1)
    lower = (c + prices.unsqueeze(1)).amin(dim=2).sum(1) - prices.sum(1)
    gap = primal - lower
    return torch.where(complete, gap, torch.full_like(gap, torch.inf))


def _auction_certified(cost: Tensor, max_rounds: int, threads: int | None = None) -> Tensor:
    """The policy in the module docstring: auction, certify, exact-on-host for the rest."""
    n = cost.shape[1]
    tol = certification_tolerance(cost)
    result = auction(cost, eps=tol / (2 * n), max_rounds=max_rounds)
    certified = dual_gap(cost, result.assignment, result.prices) <= tol
    out = result.assignment
    if not bool(certified.all()):
        redo = (~certified).nonzero().squeeze(1)
        out = out.clone()
        out[redo] = _solve_on_host(cost[redo], _host_backend(), threads).to(cost.device)
    return out
