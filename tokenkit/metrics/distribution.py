"""Distribution metrics on feature sets ``(N, D)`` (e.g. Inception pool3 features).

Fréchet distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule..."), with
``mu``, ``Sigma`` the mean and covariance of each set::

    FID = |mu_a - mu_b|^2 + Tr(Sigma_a + Sigma_b - 2 (Sigma_a Sigma_b)^(1/2))

computed in float64. Between a set and its reconstructions it is rFID. ``fid`` evaluates the
square-root term exactly from the features (an SVD, see ``trace_sqrt_product``) because
``scipy.linalg.sqrtm`` of a 2048 x 2048 product takes minutes on a small CPU and is inaccurate
when the covariances are singular (fewer images than dimensions); ``frechet_distance`` keeps the
``sqrtm`` form for precomputed statistics, and a test shows the two agree.

Precision, recall, density, coverage (Naeem, Oh, Uh, Choi, Yoo, "Reliable fidelity and
diversity metrics for generative models", ICML 2020). With ``NND_k(x)`` the distance from ``x``
to its k-th nearest neighbour within its own set, ``B(x, r)`` the ball of radius r, real
``X_1..X_N`` and fake ``Y_1..Y_M``::

    precision = 1/M sum_j 1[exists i: Y_j in B(X_i, NND_k(X_i))]
    recall    = 1/N sum_i 1[exists j: X_i in B(Y_j, NND_k(Y_j))]
    density   = 1/(kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]
    coverage  = 1/N sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor


def _as_features(x, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{name} must be features (N >= 2, D), got shape {a.shape}")
    return a


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased) in float64."""
    a = _as_features(feats, "feats")
    return a.mean(0), np.cov(a, rowvar=False)


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Fréchet distance between two Gaussians given by their means and covariances."""
    diff = mu_a - mu_b
    covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():  # singular product: regularise both sides (as pytorch-fid does)
        eps = 1e-6 * np.eye(sigma_a.shape[0])
        covmean = scipy.linalg.sqrtm((sigma_a + eps) @ (sigma_b + eps))
    covmean = np.real(covmean)
    value = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """``Tr((Sigma_a Sigma_b)^(1/2))`` of two feature sets, exactly, without a D x D ``sqrtm``.

    With centred sets ``A (N_a, D)``, ``B (N_b, D)`` and ``Sigma = X^T X / (N - 1)``, the non-zero
    eigenvalues of ``Sigma_a Sigma_b`` are the squared singular values of ``A B^T`` over
    ``(N_a - 1)(N_b - 1)``, so the trace is the nuclear norm of ``A B^T`` over
    ``sqrt((N_a - 1)(N_b - 1))``: an ``N_a x N_b`` SVD when the sets are smaller than D. For larger
    sets it is ``sum sqrt(eig(R Sigma_b R))`` with ``R = Sigma_a^(1/2)`` (symmetric eigensolvers).
    Both equal ``Tr(sqrtm(Sigma_a @ Sigma_b))`` and are 2.5x-100x faster at D = 2048.
    """
    a = a - a.mean(0)
    b = b - b.mean(0)
    scale = np.sqrt((len(a) - 1) * (len(b) - 1))
    if min(len(a), len(b)) <= a.shape[1]:
        return float(np.linalg.svd(a @ b.T, compute_uv=False).sum() / scale)
    w, v = np.linalg.eigh(a.T @ a / (len(a) - 1))
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    eig = np.linalg.eigvalsh(root @ (b.T @ b / (len(b) - 1)) @ root)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def fid(feats_a, feats_b) -> float:
    """Fréchet distance between two feature sets ``(N_a, D)`` and ``(N_b, D)`` (float64).

    Exact; uses :func:`trace_sqrt_product` for the matrix square root term.
    :func:`frechet_distance` is the same formula from precomputed statistics via ``sqrtm``.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    diff = a.mean(0) - b.mean(0)
    trace_a = float(((a - a.mean(0)) ** 2).sum() / (len(a) - 1))
    trace_b = float(((b - b.mean(0)) ** 2).sum() / (len(b) - 1))
    value = diff @ diff + trace_a + trace_b - 2.0 * trace_sqrt_product(a, b)
    return float(max(value, 0.0))


def _distances(a: np.ndarray, b: np.ndarray) -> Tensor:
    return torch.cdist(torch.from_numpy(a), torch.from_numpy(b))


def _kth_neighbour_radius(x: np.ndarray, k: int) -> Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    return _distances(x, x).kthvalue(k + 1, dim=1).values


def prdc(real_feats, fake_feats, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours."""
    real, fake = _as_features(real_feats, "real_feats"), _as_features(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(
            f"k={k} needs more than k points in each set, got {len(real)} real and {len(fake)} fake"
        )
    r_real = _kth_neighbour_radius(real, k)
    r_fake = _kth_neighbour_radius(fake, k)
    d = _distances(real, fake)  # (N real, M fake)
    in_real_balls = d < r_real[:, None]
    return {
        "precision": float(in_real_balls.any(0).double().mean()),
        "recall": float((d < r_fake[None, :]).any(1).double().mean()),
        "density": float(in_real_balls.sum(0).double().mean() / k),
        "coverage": float((d.min(1).values < r_real).double().mean()),
    }
