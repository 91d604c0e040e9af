"""tokenkit demo: load a shipped tokenizer, tokenize and reconstruct sample images, make new ones.

    python examples/demo.py                       # the shipped pivq-fashion tokenizer, examples/images/
    python examples/demo.py --model vq-fashion    # any tokenizer: name, hf-hub:org/repo or a folder
    python examples/demo.py --images my_pngs/ --out out/

Prints the tokens per image, the bits they take, PSNR and SSIM of the reconstructions and the
encode + decode time. Writes one PNG: the originals, their reconstructions and, for a PI-VQ
tokenizer, interpolation samples (new images decoded from mixed code sets of two originals, one
decoder pass) and an interpolation from the first image to the second.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tokenkit
from tokenkit.metrics import distinct_codes, psnr, ssim
from tokenkit.pictures import section_grid

HERE = Path(__file__).resolve().parent


def load_images(folder: Path, size: int, channels: int) -> torch.Tensor:
    """Every PNG/JPEG in ``folder`` as a ``(B, C, size, size)`` batch in [-1, 1]."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not paths:
        raise SystemExit(f"no .png/.jpg images in {folder}")
    mode = "L" if channels == 1 else "RGB"
    arrays = [np.asarray(Image.open(p).convert(mode).resize((size, size), Image.BICUBIC)) for p in paths]
    x = torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1.0
    return x[:, None] if channels == 1 else x.permute(0, 3, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="pivq-fashion", help="pretrained name, hf-hub:org/repo or a folder"
    )
    parser.add_argument("--images", type=Path, default=HERE / "images")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--samples", type=int, default=20, help="interpolation samples (PI-VQ tokenizers)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples' parent and code draws")
    args = parser.parse_args()

    tok = tokenkit.load(args.model).eval()
    config = tok.config
    x = load_images(args.images, getattr(config, "image_size", 28), getattr(config, "channels", 1))

    with torch.no_grad():
        tok.encode(x[:1])  # warm-up: the first matching call compiles the solver (numba, then cached)
        start = time.perf_counter()
        tokens = tok.encode(x)
        recon = tok.decode(tokens)
        seconds = time.perf_counter() - start

    k = tok.quantizer.codebook_size
    per_image = tokens[0].numel()
    sections = [("originals", x), ("reconstructions", recon)]
    is_set = hasattr(tok, "sample")
    if is_set and args.samples > 0:
        generator = torch.Generator().manual_seed(args.seed)
        samples = tok.sample(args.samples, references=tokens, generator=generator)
        path = tok.interpolate(tokens[0], tokens[1], steps=10, generator=generator)
        sections += [
            ("interpolation samples (mixed code sets of two originals)", samples),
            ("interpolation: first original -> second", path),
        ]
    grid = section_grid(sections, args.out / "demo.png", nrow=10)

    print(f"tokenizer           {args.model}: {tok.architecture} + {config.quantizer} (K = {k})")
    print(f"images              {len(x)} from {args.images}, {tuple(x.shape[1:])}")
    bits = bits_per_image(k, per_image, is_set)
    print(f"tokens per image    {per_image} (grid {tuple(tokens.shape[1:])}), {bits}")
    print(f"distinct codes      {distinct_codes(tokens.flatten(1)).float().mean():.1f} per image")
    print(f"PSNR                {psnr(x, recon):.2f} dB")
    print(f"SSIM                {ssim(x, recon):.4f}")
    threads = torch.get_num_threads()
    print(f"encode + decode     {seconds * 1e3 / len(x):.2f} ms per image on {threads} threads")
    if len(sections) > 2:
        print(
            f"samples             {len(samples)} new images from pairs of the originals' code sets; "
            f"{sample_novelty(samples, x):.2f} mean L1 to the closest original"
        )
    print(f"wrote               {grid}")


def bits_per_image(k: int, m: int, is_set: bool) -> str:
    """A grid of ``m`` tokens takes ``m log2 K`` bits; an unordered set of ``m`` distinct codes
    ``log2 C(K, m)`` (the order carries nothing)."""
    grid_bits = m * math.log2(k)
    if not is_set:
        return f"{grid_bits:.0f} bits per image"
    set_bits = (math.lgamma(k + 1) - math.lgamma(m + 1) - math.lgamma(k - m + 1)) / math.log(2)
    return f"an unordered set of distinct codes: {set_bits:.0f} bits per image (log2 C({k}, {m}))"


def sample_novelty(samples: torch.Tensor, originals: torch.Tensor) -> float:
    """Mean over samples of the per-pixel L1 distance to the closest original (0: a copy)."""
    distance = (samples[:, None] - originals[None]).abs().flatten(2).mean(-1)
    return float(distance.min(dim=1).values.mean())


if __name__ == "__main__":
    main()
