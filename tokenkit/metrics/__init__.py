"""Evaluation metrics of the pinned protocol (DESIGN.md 7).

Images: :func:`psnr`, :func:`ssim`, rFID (:class:`InceptionFeatures` + :func:`fid`),
:func:`prdc`. Codes: :func:`cvu`, :func:`perplexity`, :func:`distinct_codes`, :class:`CodeUsage`.
Audio: :func:`pesq_wb`, :func:`stoi`. Images are ``(B, C, H, W)`` in [-1, 1] (``data_range=2``).
"""

from .audio import pesq_wb, stoi
from .codes import CodeUsage, code_counts, cvu, distinct_codes, entropy, perplexity
from .distribution import feature_stats, fid, frechet_distance, prdc, trace_sqrt_product
from .image import psnr, ssim
from .inception import InceptionFeatures, inception_weights_path, inception_weights_sha256

__all__ = [
    "CodeUsage",
    "InceptionFeatures",
    "code_counts",
    "cvu",
    "distinct_codes",
    "entropy",
    "feature_stats",
    "fid",
    "frechet_distance",
    "inception_weights_path",
    "inception_weights_sha256",
    "pesq_wb",
    "perplexity",
    "prdc",
    "psnr",
    "ssim",
    "stoi",
    "trace_sqrt_product",
]
