"""Exact assignment from short candidate lists, certified by one private "outside" column per row.

Matching quantization solves ``min sum_i C[i, sigma(i)]`` over injective ``sigma`` for cost matrices
``C (N, K)``, ``N <= K``. When latents are well spread, the optimal column of a row is nearly always
among its few cheapest (on 64 x 256 x 1024 Gaussian batches the optimum never went past a row's 9th
cheapest column), yet a dense solver reads all ``N K`` entries several times. This module solves a
small sparse problem instead and proves that its answer is optimal for the dense one. The
certificate is our own (see docs/pivq.md); the solver is the textbook one.

Candidate lists. One pass over the matrix records, per row ``i`` and column group (``j mod 64``),
the smallest entry, its column and the second smallest entry. Row ``i`` first keeps the minimum of
every group whose minimum is within ``delta`` of the row minimum ``m_i`` (``delta`` is set per
matrix so that a row keeps a handful), without reading the matrix again. It also gets a private
virtual column ``o_i`` whose cost ``t_i`` is no more than any entry it dropped: the smallest of the
minima of the groups it left out and of the second entries of the groups it kept.

Certificate. Call the sparse problem with the virtual columns the *relaxed* problem.

- Its optimum is a lower bound on the dense optimum. Take any dense assignment and move every row
  that uses a dropped column to its own virtual column. That is feasible for the relaxed problem,
  because virtual columns are private, and no dearer, because ``t_i <=`` the dropped cost.
- A relaxed optimum that uses no virtual column is itself a dense assignment, so its cost is also
  an upper bound on the dense optimum.

So such an optimum is optimal for the dense problem, whatever the dense problem's other entries are.

When some rows take their virtual columns, their lists are made again by scanning their rows for
every column that costs at most ``tau_i``, with ``tau_i`` twice as far from ``m_i`` each time and
virtual cost ``tau_i``. They re-enter the relaxed problem, whose other rows keep their matching and
duals.
When more than a quarter of the rows go outside (latents contending for the same codes), or after
:data:`ROUNDS` rounds, the matrix is reported as not certified and the caller solves it densely;
after a few such matrices the rest of the batch goes to the dense solver untried (:class:`Attempts`).

Solver: successive shortest augmenting paths with dual potentials (Dijkstra on reduced costs, one
row at a time; the rectangular form of Jonker & Volgenant 1987 as written by Crouse 2016, IEEE TAES
52(4)), on the candidate lists only, after a greedy start in which every row whose cheapest column
is still free takes it. It is exact for the relaxed problem, in float64.

The kernels are compiled by numba (cached on disk after the first call), release the GIL and work
one matrix at a time; :func:`solve_sparse` spreads a batch over threads. Finding the lists reads
every entry once (about 4 ms for 64 x 256 x 1024 on one core here); the solve then touches only a
few entries per row.
"""

from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

#: strided column groups (``j mod GROUPS``); their minima show how far down a row the list must go
GROUPS = 64
#: matrices narrower than this go straight to the dense solver (they are cheap there)
MIN_CODES = 4 * GROUPS
#: a row's list holds at most this many real columns (at least GROUPS)
WIDTH = 64
#: ``delta`` is set so that about ``DEPTH`` groups of a row have their minimum within ``delta``
#: (6 or 8 made more rows go outside: a kept group's second entry lowers the virtual cost)
DEPTH = 4
#: list-growing rounds before a matrix is handed to the dense solver
ROUNDS = 12
#: matrices per task given to a worker thread
CHUNK = 4

#: per row and group: the smallest entry, where it is, the second smallest; per row: the minimum
#: ``m_i`` and its column, threshold ``tau_i``, virtual cost, list length (virtual edge included),
#: list columns and costs
Lists = namedtuple("Lists", "mins where second row_min argmin tau bound count cols vals")
#: the solver's state: duals ``u`` (rows) and ``v`` (k real + n virtual columns), the matching both
#: ways, and Dijkstra's work arrays
Duals = namedtuple("Duals", "u v col4row row4col dist path scanned touched frontier tree")


def solve_sparse(cost: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Certified sparse solve of every matrix of ``cost (B, N, K)`` (float32, C-contiguous, N <= K).

    Returns ``columns (B, N) int64`` and ``certified (B,) bool``. Where ``certified[b]`` is true,
    ``columns[b]`` is an optimal assignment of matrix ``b``; elsewhere it is meaningless and the
    caller must solve that matrix another way (all of them when ``K < MIN_CODES``, and the rest of
    the batch once :class:`Attempts` gives up).
    """
    b, n, _ = cost.shape
    columns = np.zeros((b, n), dtype=np.int64)
    certified = np.zeros(b, dtype=np.bool_)
    attempts = Attempts()
    starts = range(0, b, CHUNK)
    chunks = iter(starts)  # shared by the workers: next() is atomic under the GIL

    def work() -> None:
        for start in chunks:
            if not attempts.worth_trying():
                return
            stop = min(b, start + CHUNK)
            solve_sparse_into(cost[start:stop], columns[start:stop], certified[start:stop])
            attempts.record(certified[start:stop])

    run_on_workers(work, min(threads, len(starts)))
    return columns, certified


_POOL: ThreadPoolExecutor | None = None


def run_on_workers(work: Callable[[], None], workers: int) -> None:
    """Run ``work()`` on ``workers`` of the solver's threads at once (on this thread when 1) and wait;
    the threads (one per core) start on first use and are kept."""
    global _POOL
    if workers <= 1:
        work()
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="tokenkit-assign")
    for future in [_POOL.submit(work) for _ in range(workers)]:
        future.result()


class Attempts:
    """Gives up on a batch whose matrices mostly fail to certify (contended latents), so that the rest
    go straight to the dense solver: after ``probe`` matrices, it keeps trying only while at least
    half of those tried were certified."""

    def __init__(self, probe: int = 8) -> None:
        self.probe = probe
        self.tried = 0
        self.certified = 0

    def worth_trying(self) -> bool:
        return self.tried < self.probe or 2 * self.certified >= self.tried

    def record(self, certified: np.ndarray) -> None:
        self.tried += len(certified)
        self.certified += int(certified.sum())


def solve_sparse_into(cost: np.ndarray, columns: np.ndarray, certified: np.ndarray) -> None:
    """:func:`solve_sparse` on the calling thread, writing into ``columns (B, N)`` and ``certified (B,)``.

    Releases the GIL, so threads can share a batch; for callers that make each cost tile themselves.
    """
    b, n, k = cost.shape
    if b == 0:
        return
    if n == 0:
        certified[:] = True
    elif k < MIN_CODES:
        certified[:] = False
    else:
        _solve_matrices(cost, columns, certified)


@njit(nogil=True, cache=True)
def _solve_matrices(cost, columns, certified):  # pragma: no cover - compiled
    """Every matrix of ``cost``, one after the other, with buffers shared between them."""
    n, k = cost.shape[1], cost.shape[2]
    m = k + n
    lists = Lists(np.empty((n, GROUPS), np.float32), np.empty((n, GROUPS), np.int32),
                  np.empty((n, GROUPS), np.float32), np.empty(n), np.empty(n, np.int64), np.empty(n),
                  np.empty(n), np.empty(n, np.int64), np.empty((n, WIDTH + 1), np.int64),
                  np.empty((n, WIDTH + 1)))
    duals = Duals(np.empty(n), np.empty(m), np.empty(n, np.int64), np.empty(m, np.int64),
                  np.full(m, np.inf), np.empty(m, np.int64), np.zeros(m, np.bool_),
                  np.empty(m, np.int64), np.empty(m, np.int64), np.empty(n, np.int64))
    rows = np.empty(n, np.int64)
    for b in range(cost.shape[0]):
        certified[b] = _certified_matrix(cost[b], lists, duals, rows)
        columns[b] = duals.col4row


@njit(nogil=True, cache=True)
def _certified_matrix(c, lists, duals, rows):  # pragma: no cover - compiled
    """Lists, relaxed solve, certificate and list growing for one matrix ``c``; True when certified."""
    n, k = c.shape
    _group_statistics(c, lists)
    _lists_from_groups(_margin(lists.mins, lists.row_min), k, lists)
    for i in range(n):
        duals.u[i] = 0.0
        duals.col4row[i] = -1
    for j in range(k + n):
        duals.v[j] = 0.0
        duals.row4col[j] = -1
    n_rows = _take_free_minima(rows, lists, duals)
    for _ in range(ROUNDS):
        if not _shortest_augmenting_paths(rows, n_rows, lists, duals):
            return False
        n_rows = 0
        for i in range(n):
            if duals.col4row[i] >= k:
                rows[n_rows] = i
                n_rows += 1
        if n_rows == 0:
            return True
        if 4 * n_rows > n:  # many rows want the same codes: the dense solver is the better tool
            return False
        for t in range(n_rows):  # the rows that went outside: release and grow their lists
            i = rows[t]
            if lists.count[i] > WIDTH:  # its WIDTH cheapest columns did not suffice
                return False
            _release(i, duals)
            lists.tau[i] = lists.row_min[i] + 2.0 * (lists.tau[i] - lists.row_min[i])
        _fill_lists(c, rows, n_rows, lists)
        for t in range(n_rows):  # ... and re-enter them
            _fit_row(rows[t], lists, duals)
    return False


@njit(nogil=True, cache=True, fastmath=True)
def _group_statistics(c, lists):  # pragma: no cover - compiled
    """Per row ``i`` and group ``g`` (the columns ``j = g mod GROUPS``): the smallest entry, its column
    and the second smallest entry; and the row minimum ``m_i``.

    One streaming pass over the matrix; the inner loops run over ``GROUPS`` adjacent entries and
    vectorise (a compile-time group count keeps the accumulators in registers).
    """
    mins, where, second, row_min = lists.mins, lists.where, lists.second, lists.row_min
    n, k = c.shape
    full = (k // GROUPS) * GROUPS
    low = np.empty(GROUPS, np.float32)
    at = np.empty(GROUPS, np.int32)
    next_low = np.empty(GROUPS, np.float32)
    for i in range(n):
        for g in range(GROUPS):
            low[g] = c[i, g]
            at[g] = g
            next_low[g] = np.inf
        for s in range(GROUPS, full, GROUPS):
            for g in range(GROUPS):
                x = c[i, s + g]
                lo = low[g]
                next_low[g] = min(next_low[g], max(lo, x))
                at[g] = s + g if x < lo else at[g]
                low[g] = min(lo, x)
        for j in range(full, k):  # the last, partial chunk
            g = j - full
            x = c[i, j]
            next_low[g] = min(next_low[g], max(low[g], x))
            at[g] = j if x < low[g] else at[g]
            low[g] = min(low[g], x)
        smallest = low[0]
        for g in range(GROUPS):
            mins[i, g] = low[g]
            where[i, g] = at[g]
            second[i, g] = next_low[g]
            smallest = min(smallest, low[g])
        row_min[i] = smallest


@njit(nogil=True, cache=True)
def _margin(mins, row_min):  # pragma: no cover - compiled
    """``delta``: over the first 8 rows, the mean of (``DEPTH``-th smallest group minimum - row
    minimum), so that a row keeps a few groups' worth of columns (about 5 on Gaussian latents)."""
    probe = min(mins.shape[0], 8)
    smallest = np.empty(DEPTH, np.float32)
    total = 0.0
    for i in range(probe):
        total += _kth_smallest(mins[i], smallest) - row_min[i]
    delta = total / probe
    return delta if delta > 0.0 else 1e-30


@njit(nogil=True, cache=True)
def _kth_smallest(a, smallest):  # pragma: no cover - compiled
    """The ``len(smallest)``-th smallest entry of ``a``, by insertion into the sorted ``smallest``."""
    kth = smallest.shape[0]
    filled = 0
    for x in a:
        if filled < kth:
            p = filled
            filled += 1
        elif x < smallest[kth - 1]:
            p = kth - 1
        else:
            continue
        while p > 0 and smallest[p - 1] > x:
            smallest[p] = smallest[p - 1]
            p -= 1
        smallest[p] = x
    return smallest[kth - 1]


@njit(nogil=True, cache=True)
def _lists_from_groups(delta, k, lists):  # pragma: no cover - compiled
    """First lists, without reading the matrix again: row ``i`` keeps the minimum of every group whose
    minimum is ``<= tau_i = m_i + delta``. Every entry it drops is at least the minimum of a group it
    left out or the second smallest of a group it kept, so the smallest of those is its virtual cost."""
    mins, where, second, row_min, argmin, tau, bound, count, cols, vals = (
        lists.mins, lists.where, lists.second, lists.row_min, lists.argmin, lists.tau, lists.bound,
        lists.count, lists.cols, lists.vals,
    )
    for i in range(mins.shape[0]):
        t = row_min[i] + delta
        tau[i] = t
        lowest_dropped = np.inf
        filled = 0
        argmin[i] = -1
        for g in range(GROUPS):
            x = mins[i, g]
            if x <= t:
                cols[i, filled] = where[i, g]
                vals[i, filled] = x
                filled += 1
                lowest_dropped = min(lowest_dropped, second[i, g])
                if x == row_min[i]:
                    argmin[i] = where[i, g]
            else:
                lowest_dropped = min(lowest_dropped, x)
        bound[i] = lowest_dropped
        cols[i, filled] = k + i
        vals[i, filled] = lowest_dropped
        count[i] = filled + 1


@njit(nogil=True, cache=True)
def _fill_lists(c, rows, n_rows, lists):  # pragma: no cover - compiled
    """The lists of rows ``rows[:n_rows]`` by scanning them: each row's columns with
    ``c[i, j] <= tau_i``, then its virtual column ``k + i`` at cost ``tau_i`` (every column dropped
    costs more). Only groups whose minimum is ``<= tau_i`` are scanned. A list longer than
    :data:`WIDTH` keeps its ``WIDTH`` cheapest columns, and its virtual cost is the cheapest one
    dropped."""
    mins, tau, bound, cols, vals, count = (  # unpacked once: a field read in a loop costs
        lists.mins, lists.tau, lists.bound, lists.cols, lists.vals, lists.count
    )
    k = c.shape[1]
    for r in range(n_rows):
        i = rows[r]
        t = tau[i]
        filled = 0
        for g in range(GROUPS):
            if mins[i, g] <= t:
                for j in range(g, k, GROUPS):
                    x = c[i, j]
                    if x <= t:
                        if filled < WIDTH:
                            cols[i, filled] = j
                            vals[i, filled] = x
                        filled += 1
        bound[i] = t
        if filled > WIDTH:
            filled = _keep_cheapest(c, i, bound, cols, vals)
        cols[i, filled] = k + i
        vals[i, filled] = bound[i]
        count[i] = filled + 1


@njit(nogil=True, cache=True)
def _keep_cheapest(c, i, bound, cols, vals):  # pragma: no cover - compiled
    """Overflow of row ``i``'s list (rare): keep its ``WIDTH`` cheapest columns; the next one's cost
    is the virtual cost."""
    order = np.argsort(c[i])
    for e in range(WIDTH):
        cols[i, e] = order[e]
        vals[i, e] = c[i, order[e]]
    bound[i] = c[i, order[WIDTH]]
    return WIDTH


@njit(nogil=True, cache=True)
def _take_free_minima(rows, lists, duals):  # pragma: no cover - compiled
    """Greedy start: a row whose cheapest column is still free takes it, with ``u_i = m_i`` and
    ``v = 0`` (then every reduced cost is ``c_ij - m_i >= 0``, and 0 on the match). Writes the other
    rows to ``rows`` and returns their number: they go through the shortest-path solver."""
    n_rows = 0
    for i in range(rows.shape[0]):
        j = lists.argmin[i]  # -1 only if the row has no finite minimum
        if j >= 0 and duals.row4col[j] < 0:
            duals.row4col[j] = i
            duals.col4row[i] = j
            duals.u[i] = lists.row_min[i]
        else:
            rows[n_rows] = i
            n_rows += 1
    return n_rows


@njit(nogil=True, cache=True)
def _release(i, duals):  # pragma: no cover - compiled
    """Take row ``i`` off its virtual column, which is free again with ``v = 0`` (only row ``i`` has
    an edge to it, so no other reduced cost changes)."""
    j = duals.col4row[i]
    duals.row4col[j] = -1
    duals.v[j] = 0.0
    duals.col4row[i] = -1


@njit(nogil=True, cache=True)
def _fit_row(i, lists, duals):  # pragma: no cover - compiled
    """``u_i = min_j (c_ij - v_j)`` over row ``i``'s new list: every edge of the unassigned row has a
    non-negative reduced cost again, so the solver carries on from the current duals."""
    best = np.inf
    for e in range(lists.count[i]):
        best = min(best, lists.vals[i, e] - duals.v[lists.cols[i, e]])
    duals.u[i] = best


@njit(nogil=True, cache=True)
def _shortest_augmenting_paths(rows, n_rows, lists, duals):  # pragma: no cover - compiled
    """Insert the unassigned rows ``rows[:n_rows]`` into the relaxed problem's optimal matching.

    Row ``i``'s edges are ``cols[i, :count[i]]`` with costs ``vals[i, :count[i]]``; its last edge is
    its private virtual column, so a path always exists. Each row takes a shortest path, in reduced
    costs ``c_ij - u_i - v_j``, from itself to a free column (Dijkstra, stopping at the first free
    column reached); then the duals are updated and the path flipped (Crouse 2016, Algorithm 2, on
    sparse rows). Needs, on entry: reduced costs >= 0 on the edges of matched rows, = 0 on matched
    edges, ``v = 0`` on free columns. Then the matching is optimal on exit, and the result True;
    False if some row has no path at finite cost (non-finite entries).
    """
    k = duals.v.shape[0] - lists.count.shape[0]
    u, v, col4row, row4col = duals.u, duals.v, duals.col4row, duals.row4col
    dist, path, scanned = duals.dist, duals.path, duals.scanned
    touched, frontier, tree = duals.touched, duals.frontier, duals.tree
    for t_row in range(n_rows):
        r = rows[t_row]
        n_touched = 0
        n_frontier = 0
        n_tree = 0
        i = r
        min_val = 0.0
        sink = -1
        while sink < 0:
            tree[n_tree] = i
            n_tree += 1
            for e in range(lists.count[i]):
                j = lists.cols[i, e]
                if scanned[j]:
                    continue
                reduced = min_val + lists.vals[i, e] - u[i] - v[j]
                if reduced < dist[j]:
                    if dist[j] == np.inf:
                        touched[n_touched] = j
                        n_touched += 1
                        frontier[n_frontier] = j
                        n_frontier += 1
                    dist[j] = reduced
                    path[j] = i
            if n_frontier == 0:  # no path at finite cost (non-finite entries): give up the matrix
                _clear(touched, n_touched, dist, scanned)
                return False
            # the closest frontier column; on ties a free one, and a real one before a virtual one
            best = 0
            best_j = frontier[0]
            for t in range(1, n_frontier):
                j = frontier[t]
                if dist[j] < dist[best_j] or (dist[j] == dist[best_j] and _before(j, best_j, row4col, k)):
                    best = t
                    best_j = j
            frontier[best] = frontier[n_frontier - 1]
            n_frontier -= 1
            scanned[best_j] = True
            min_val = dist[best_j]
            if row4col[best_j] < 0:
                sink = best_j
            else:
                i = row4col[best_j]
        u[r] += min_val  # dual update (Crouse 2016, eq. 14-15)
        for t in range(1, n_tree):
            i = tree[t]
            u[i] += min_val - dist[col4row[i]]
        for t in range(n_touched):
            j = touched[t]
            if scanned[j]:
                v[j] -= min_val - dist[j]
        _clear(touched, n_touched, dist, scanned)
        j = sink  # flip the path
        while True:
            i = path[j]
            row4col[j] = i
            previous = col4row[i]
            col4row[i] = j
            j = previous
            if i == r:
                break
    return True


@njit(nogil=True, cache=True)
def _clear(touched, n_touched, dist, scanned):  # pragma: no cover - compiled
    """Reset Dijkstra's work arrays where the last search wrote them."""
    for t in range(n_touched):
        j = touched[t]
        dist[j] = np.inf
        scanned[j] = False


@njit(nogil=True, cache=True)
def _before(j, other, row4col, k):  # pragma: no cover - compiled
    """Tie-break between two columns at the same distance: free first, then real before virtual."""
    free_j = row4col[j] < 0
    free_other = row4col[other] < 0
    if free_j != free_other:
        return free_j
    return j < k and other >= k
