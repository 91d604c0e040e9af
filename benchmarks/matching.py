"""Matching quantization speed, measured side by side in one run (never run as a test).

1. The batched exact assignment (``tokenkit.ops.assignment.assign``) on B=64 cost matrices of
   N=256 latents x K=1024 codes, D=64, in two regimes: well-spread (z, e ~ N(0, I)) and contended
   (z ~ N(0, 0.1^2 I): all latents near one point, every row wants the same codes), against a
   scipy ``linear_sum_assignment`` loop and scipy in a thread pool; every result's total cost is
   checked against the scipy loop's optimum.
   ``assign(auto)`` is the certified candidate-list solver on CPU (``"sparse"``), ``assign(lapx)``
   the dense Jonker-Volgenant one it falls back to.
2. From latents to codes, as the quantizer does it: ``assign_codes`` (cost tiles made and solved in
   cache) against building the whole cost with one GEMM and solving it with lapx.
3. A full training step (cost + exact solve + straight-through + loss, forward and backward) of the
   ``matching`` quantizer against a ``nearest`` (VQ-VAE) step on the same input and codebook.

Methods take turns round by round and the medians are reported, so machine noise hits all alike.
Run: ``python benchmarks/matching.py`` (``--threads 1`` for single-core ratios on a busy machine;
``--device cuda --codes 1024 4096 8192 --no-scipy`` on a GPU machine; ``--auction`` adds the
auction backend on CPU, slow there by design). The first row of each table block is the scipy loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from tokenkit import quantizers
from tokenkit.ops.assignment import assign, assign_codes, code_costs

REGIMES = {"well-spread": 1.0, "contended": 0.1}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(
    fns: dict[str, Callable[[], object]], rounds: int, device: torch.device, warmup: int = 1
) -> dict[str, float]:
    """Median wall time (ms) of each function, the functions taking turns each round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def cost_batch(b: int, n: int, k: int, d: int, spread: float, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(b, n, d, generator=g) * spread).to(device)
    e = torch.randn(k, d, generator=g).to(device)
    return torch.baddbmm(e.square().sum(1), z, e.t().expand(b, d, k), alpha=-2.0)


def scipy_loop(cost: np.ndarray) -> list[np.ndarray]:
    return [linear_sum_assignment(m)[1] for m in cost]


def scipy_threads(cost: np.ndarray, threads: int) -> list[np.ndarray]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda m: linear_sum_assignment(m)[1], cost))


def totals(cost: np.ndarray, cols: list[np.ndarray] | torch.Tensor) -> np.ndarray:
    cols = np.asarray(cols.cpu() if isinstance(cols, torch.Tensor) else np.stack(cols))
    return np.take_along_axis(cost.astype(np.float64), cols[:, :, None], axis=2).sum((1, 2))


def bench_solver(args: argparse.Namespace, device: torch.device) -> None:
    print(f"\n1. exact assignment, B={args.batch}, N={args.latents}, D={args.dim}, device={device}, "
          f"{args.threads} solver threads, {torch.get_num_threads()} torch threads")
    print(f"{'regime':12} {'K':>5} {'method':28} {'ms':>9} {'vs first row':>14} {'max rel. excess':>16}")
    for k in args.codes:
        for regime, spread in REGIMES.items():
            cost = cost_batch(args.batch, args.latents, k, args.dim, spread, device)
            host = cost.float().cpu().numpy()
            host64 = host.astype(np.float64)
            fns: dict[str, Callable[[], object]] = {}
            if args.no_scipy:  # large K on a GPU machine: the scipy loop would take minutes
                optimum = totals(host, assign(cost, "lapx", threads=args.threads))
            else:
                optimum = totals(host, scipy_loop(host))
                fns["scipy loop"] = partial(scipy_loop, host64)
                fns["scipy + threads"] = partial(scipy_threads, host64, args.threads)
            fns["tokenkit assign(auto)"] = partial(assign, cost, "auto", threads=args.threads)
            if device.type == "cpu":
                fns["tokenkit assign(lapx)"] = partial(assign, cost, "lapx", threads=args.threads)
                fns["tokenkit assign(scipy)"] = partial(assign, cost, "scipy", threads=args.threads)
            if device.type == "cuda":
                fns["tokenkit assign(lapx) from GPU"] = partial(assign, cost, "lapx", threads=args.threads)
            if args.auction and device.type == "cpu":
                fns["tokenkit assign(auction)"] = partial(assign, cost, "auction", threads=args.threads)
            rounds = args.rounds if regime == "well-spread" else max(1, args.rounds // 2)
            ms = interleaved_medians(fns, rounds, device)
            base = next(iter(ms.values()))  # the scipy loop, or the first row with --no-scipy
            for name, t in ms.items():
                if name.startswith("scipy"):
                    cols = scipy_loop(host) if name == "scipy loop" else scipy_threads(host, args.threads)
                else:
                    cols = assign(cost, name.split("(")[1].split(")")[0])
                excess = float(np.max((totals(host, cols) - optimum) / np.abs(optimum)))
                print(f"{regime:12} {k:5d} {name:28} {t:9.2f} {base / t:13.1f}x {excess:16.2e}")


def whole_cost_then_lapx(z: torch.Tensor, e: torch.Tensor, threads: int, out: torch.Tensor) -> torch.Tensor:
    """The whole (B, N, K) cost into a reused buffer (a fresh 64 MB one faults pages), then lapx."""
    return assign(code_costs(z, e, out=out), "lapx", threads=threads)


def bench_from_latents(args: argparse.Namespace, device: torch.device) -> None:
    b, n, d, k = args.batch, args.latents, args.dim, args.codes[0]
    print(f"\n2. latents to distinct codes (GEMM + exact solve), z of shape ({b}, {n}, {d}), K={k}, "
          f"device={device}, {args.threads} threads")
    print(f"{'regime':12} {'method':34} {'ms':>9} {'vs first row':>14} {'max rel. excess':>16}")
    for regime, spread in REGIMES.items():
        g = torch.Generator().manual_seed(2)
        z = (torch.randn(b, n, d, generator=g) * spread).to(device)
        e = torch.randn(k, d, generator=g).to(device)
        host = code_costs(z, e).float().cpu().numpy()
        fns: dict[str, Callable[[], object]] = {
            "whole cost + assign(lapx)": partial(
                whole_cost_then_lapx, z, e, args.threads, torch.empty(b, n, k, device=device)
            ),
            "assign_codes(auto)": partial(assign_codes, z, e, threads=args.threads),
        }
        rounds = args.rounds if regime == "well-spread" else max(1, args.rounds // 2)
        ms = interleaved_medians(fns, rounds, device)
        base = next(iter(ms.values()))
        optimum = totals(host, fns["whole cost + assign(lapx)"]())
        for name, t in ms.items():
            excess = float(np.max((totals(host, fns[name]()) - optimum) / np.abs(optimum)))
            print(f"{regime:12} {name:34} {t:9.2f} {base / t:13.1f}x {excess:16.2e}")


def train_step(q: torch.nn.Module, x: torch.Tensor, w: torch.Tensor) -> None:
    """cost/lookup + straight-through + loss, forward and backward."""
    z = x.detach().requires_grad_(True)
    out = q(z)
    ((out.quantized * w).mean() + out.loss).backward()
    q.zero_grad(set_to_none=True)


def bench_training_step(args: argparse.Namespace, device: torch.device) -> None:
    b, n, d, k = args.batch, args.latents, args.dim, args.codes[0]
    print(f"\n3. training step (forward + backward), z of shape ({b}, {n}, {d}), K={k}, device={device}, "
          f"{args.threads} threads")
    print(f"{'regime':12} {'quantizer':10} {'ms':>9} {'vs nearest':>11}")
    torch.manual_seed(0)
    matching = quantizers.create(
        "matching", dim=d, codebook_size=k, init_steps=0, solver_threads=args.threads
    )
    matching = matching.to(device).train()
    nearest = quantizers.create("nearest", dim=d, codebook_size=k).to(device).train()
    with torch.no_grad():
        nearest.embedding.copy_(matching.embedding)
    for regime, spread in REGIMES.items():
        g = torch.Generator().manual_seed(1)
        x = (torch.randn(b, n, d, generator=g) * spread).to(device)
        w = torch.randn(b, n, d, generator=g).to(device)

        rounds = args.rounds if regime == "well-spread" else max(1, args.rounds // 2)
        fns = {"nearest": partial(train_step, nearest, x, w), "matching": partial(train_step, matching, x, w)}
        ms = interleaved_medians(fns, rounds, device)
        for name, t in ms.items():
            print(f"{regime:12} {name:10} {t:9.2f} {t / ms['nearest']:10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--latents", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--codes", type=int, nargs="+", default=[1024])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="solver threads (lapx, scipy pools) and torch intra-op threads")
    parser.add_argument("--auction", action="store_true", help="also time the auction backend on CPU")
    parser.add_argument("--skip-step", action="store_true", help="only the solver table (1.)")
    parser.add_argument("--no-scipy", action="store_true",
                        help="skip the scipy rows (ratios then relative to the first row; optimum from lapx)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    bench_solver(args, device)
    if not args.skip_step:
        bench_from_latents(args, device)
        bench_training_step(args, device)


if __name__ == "__main__":
    main()
