"""tokenkit demo: load a shipped tokenizer, tokenize and reconstruct sample images, write a PNG.

    python examples/demo.py                       # the shipped vq-fashion tokenizer, examples/images/
    python examples/demo.py --model hf-hub:org/repo --images my_pngs/ --out out/

Prints the tokens per image, the bits they take, PSNR and SSIM of the reconstructions, and the
encode + decode time; writes a PNG with the originals above their reconstructions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tokenkit
from tokenkit.metrics import distinct_codes, psnr, ssim
from tokenkit.pictures import reconstruction_grid

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
    parser.add_argument("--model", default="vq-fashion", help="pretrained name, hf-hub:org/repo or a folder")
    parser.add_argument("--images", type=Path, default=HERE / "images")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()

    tok = tokenkit.load(args.model).eval()
    config = tok.config
    x = load_images(args.images, getattr(config, "image_size", 28), getattr(config, "channels", 1))

    with torch.no_grad():
        start = time.perf_counter()
        tokens = tok.encode(x)
        recon = tok.decode(tokens)
        seconds = time.perf_counter() - start

    per_image = tokens[0].numel()
    bits = per_image * np.log2(tok.quantizer.codebook_size)
    grid = reconstruction_grid(x, recon, args.out / "demo.png", nrow=10)
    print(f"tokenizer           {args.model}: {tok.architecture} + {config.quantizer} "
          f"(K = {tok.quantizer.codebook_size})")
    print(f"images              {len(x)} from {args.images}, {tuple(x.shape[1:])}")
    print(f"tokens per image    {per_image} (grid {tuple(tokens.shape[1:])}), {bits:.0f} bits per image")
    print(f"distinct codes      {distinct_codes(tokens.flatten(1)).float().mean():.1f} per image")
    print(f"PSNR                {psnr(x, recon):.2f} dB")
    print(f"SSIM                {ssim(x, recon):.4f}")
    threads = torch.get_num_threads()
    print(f"encode + decode     {seconds * 1e3 / len(x):.2f} ms per image on {threads} threads")
    print(f"wrote               {grid}")


if __name__ == "__main__":
    main()
