"""PI-VQ on real images: effective capacity of matching vs nearest-neighbour, and interpolation samples.

On the shipped ``pivq-fashion`` tokenizer and Fashion-MNIST test images (Debian
``dataset-fashion-mnist``), measured side by side in one run:

1. Effective capacity = mean distinct codes per image / M (DESIGN.md §4), for the tokenizer's own
   matching quantization and for nearest-neighbour assignment of the SAME encoder latents to the
   SAME codebook (``tokenkit.ops.nearest.nearest_code``), with the ratio (the PI-VQ paper claims
   3.5x) and the PSNR of decoding each assignment.
2. Precision / recall / density / coverage (Naeem et al. 2020, k=5, FID Inception features) of
   ``--num`` interpolation samples (``tok.sample`` with the first ``--num`` test images as
   references, two parents each) against ``--num`` other held-out test images, next to the same
   metrics for the reconstructions of the reference images and for the reference images themselves
   (real vs real: what a perfect generator would score at this set size).

    python benchmarks/capacity.py                         # 1000 images for capacity, 500 + 500 for PRDC
    python benchmarks/capacity.py --capacity-num 200 --num 100
"""

from __future__ import annotations

import argparse
import time

import torch

import tokenkit
from tokenkit.data import build_dataset
from tokenkit.metrics import InceptionFeatures, prdc, psnr
from tokenkit.models.pivq import effective_capacity
from tokenkit.ops.nearest import nearest_code

PRDC_K = 5


def test_images(num: int) -> torch.Tensor:
    """The first ``num`` Fashion-MNIST test images, (num, 1, 28, 28) in [-1, 1]."""
    dataset = build_dataset({"name": "fashion-mnist", "num_items": num}, "test")
    if len(dataset) < num:
        raise SystemExit(f"asked for {num} test images, the split has {len(dataset)}")
    return torch.stack([dataset[i] for i in range(num)])


@torch.inference_mode()
def capacity(tok, images: torch.Tensor, batch_size: int = 250) -> dict[str, dict[str, float]]:
    """Matching (the tokenizer's tokens) vs nearest-neighbour on the same latents and codebook."""
    codebook = tok.quantizer.codebook()
    rows = {"matching": [], "nearest": []}
    seconds = {"matching": 0.0, "nearest": 0.0}
    for x in images.split(batch_size):
        latents = tok.set_latents(x)  # (B, M, D)
        t0 = time.perf_counter()
        matched = tok.quantizer.encode(latents)
        seconds["matching"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        nearest = nearest_code(latents.reshape(-1, latents.shape[-1]), codebook).reshape(matched.shape)
        seconds["nearest"] += time.perf_counter() - t0
        for name, tokens in (("matching", matched), ("nearest", nearest)):
            x_hat = tok.decode(tokens)
            rows[name].append((tokens, psnr(x, x_hat, reduction="none")))
    out = {}
    for name, parts in rows.items():
        tokens = torch.cat([t for t, _ in parts])
        out[name] = {
            "capacity": effective_capacity(tokens),
            "distinct": effective_capacity(tokens) * tokens.shape[1],
            "psnr": float(torch.cat([p for _, p in parts]).mean()),
            "seconds": seconds[name],
        }
    return out


@torch.inference_mode()
def interpolation_sets(
    tok, images: torch.Tensor, num: int, parents: int, seed: int
) -> dict[str, torch.Tensor]:
    """Image sets for PRDC: ``held_out`` (``images[num:2 num]``), ``references`` (``images[:num]``),
    their ``reconstructions`` and ``num`` interpolation ``samples`` of ``parents`` references each."""
    references, held_out = images[:num], images[num : 2 * num]
    ref_tokens = tok.encode(references)
    samples = tok.sample(num, ref_tokens, parents=parents, generator=torch.Generator().manual_seed(seed))
    return {
        "held_out": held_out,
        "references": references,
        "reconstructions": tok.decode(ref_tokens),
        "samples": samples,
    }


def prdc_rows(feats: dict[str, torch.Tensor], names: list[str], real: str = "held_out") -> dict[str, dict]:
    """Precision/recall/density/coverage (k = PRDC_K) of each set in ``names`` against ``feats[real]``."""
    return {name: prdc(feats[real], feats[name], k=PRDC_K) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="pivq-fashion", help="a PI-VQ tokenizer name or folder")
    parser.add_argument("--capacity-num", type=int, default=1000, help="test images for the capacity")
    parser.add_argument("--num", type=int, default=500, help="samples, and held-out images, for PRDC")
    parser.add_argument("--parents", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    tok = tokenkit.load(args.name)
    m, k = tok.config.num_latents, tok.codebook_size
    images = test_images(max(args.capacity_num, 2 * args.num))
    print(f"{args.name}: M = {m} codes per image, K = {k}; Fashion-MNIST test images; "
          f"{args.threads} torch thread(s)")

    cap = capacity(tok, images[: args.capacity_num])
    print(f"\nEffective capacity on the first {args.capacity_num} test images (same latents, same codebook)")
    print(f"{'assignment':<12} {'distinct/img':>12} {'capacity':>9} {'PSNR dB':>8} {'assign s':>9}")
    for name, row in cap.items():
        cells = f"{row['distinct']:12.2f} {row['capacity']:9.3f} {row['psnr']:8.2f} {row['seconds']:9.2f}"
        print(f"{name:<12} {cells}")
    print(f"matching / nearest capacity: {cap['matching']['capacity'] / cap['nearest']['capacity']:.2f}x "
          "(paper's claim: 3.5x)")

    sets = interpolation_sets(tok, images, args.num, args.parents, args.seed)
    net = InceptionFeatures()
    t0 = time.perf_counter()
    feats = {name: net(x) for name, x in sets.items()}
    t_features = time.perf_counter() - t0
    print(f"\nPRDC (k = {PRDC_K}, FID Inception features) against {args.num} held-out test images "
          f"(test[{args.num}:{2 * args.num}]); Inception: {t_features:.0f} s for {4 * args.num} images")
    print(f"{'set':<44} {'precision':>9} {'recall':>7} {'density':>8} {'coverage':>9}")
    labels = {
        "samples": f"interpolation samples ({args.parents} parents, n={args.num})",
        "reconstructions": f"reconstructions of the {args.num} references",
        "references": f"the {args.num} reference images (real vs real)",
    }
    for name, r in prdc_rows(feats, list(labels)).items():
        label = labels[name]
        cells = f"{r['precision']:9.3f} {r['recall']:7.3f} {r['density']:8.3f} {r['coverage']:9.3f}"
        print(f"{label:<44} {cells}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
