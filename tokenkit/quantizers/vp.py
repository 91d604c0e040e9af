"""VP-VAE vector perturbation (Zhai et al. 2026, "VP-VAE: Rethinking Vector Quantization via
Adaptive Vector Perturbation", arXiv 2602.17133, Sec. 3.2).

No codebook exists during training. The input latent ``h`` (width C) is projected to a
low-dimensional ``z = P_down(h)`` in R^d (d <= 16; d = 4 for K = 1024) and perturbed by an operator
T that imitates the error a K-code quantizer would make there; the decoder gets ``P_up(z~)``.
``S`` is a FIFO queue of recent detached latents and ``D_m(z|S)`` the distance from ``z`` to its
m-th nearest neighbour in ``S``.

- Eq. 3, scale alignment: ``M = ceil(|S| / K)``, ``R(z) = eta * D_M(z|S)`` (K equal-mass cells
  hold about M queue samples each, so D_M is about a Voronoi cell's radius);
- Eq. 4, target density: ``pi(z) ∝ D_k(z|S)^-d`` with k small (8);
- Eq. 5, proposal: ``z' = z + u``, ``u`` uniform in the d-ball of radius ``R(z)``
  (direction ``v ~ N(0, I_d)``, length ``R(z) rho^(1/d)``, ``rho ~ U[0, 1]``);
- Eq. 6-8, Metropolis-Hastings: ``alpha = 0`` if ``||z - z'|| > R(z')`` (support of the reverse
  proposal), else ``alpha = min(1, (D_k(z) D_M(z) / (D_k(z') D_M(z')))^d)``; the D_M factors are
  the ratio of the two proposal balls' volumes;
- Eq. 9: ``z~ = z'`` with probability alpha, else ``z~ = z``, applied as a detached bias
  ``z~ = z + sg(delta)``: gradients reach the encoder unchanged; no codebook or commitment loss;
- Sec. 3.2.3: ``L_norm = lambda1 ||mu_batch(z)||^2 + lambda2 ||sigma^2_batch(z) - 1||^2`` keeps the
  queue well-behaved; it is this quantizer's ``loss``;
- queue update: each valid token is pushed with probability ``update_probability`` (1e-2),
  gathered from every rank so all ranks hold the same queue (initialised with N(0, I) samples);
- Sec. 3.2.4: after training, K-means with K-means++ seeding over the encoder outputs of the
  training set gives the codebook (:meth:`VPQuantizer.fit_codebook`); eval is Eq. 12,
  ``q(z) = argmin_c ||z - c||``, then ``P_up``.

Where the authors' code differs, the paper is the default and the code is an option:
``fit_codebook_from_queue()`` fits K-means on the queue instead of the training set; the L_norm
terms are averaged over the d dimensions (``norm_reduction="mean"``, the code, whose weights 0.1 and
0.07 we use; the paper's squared norms are ``"sum"``, the same loss with weights scaled by d).

Eval before any codebook was fitted: with ``auto_fit=True`` (default) ``.eval()`` fits the codebook
on the queue (the code's variant, which also fits on ``.eval()``) with a warning, and refits it at
the next ``.eval()`` once training has changed the queue; a codebook from :meth:`fit_codebook` or
:meth:`fit_codebook_from_queue` is kept until the next such call. Eval forwards and ``encode`` never
change the state. With ``auto_fit=False`` eval raises an error that says to call ``fit_codebook``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tokenkit.ops import distributed
from tokenkit.ops.kmeans import kmeans, kmeans_consistent
from tokenkit.ops.knn import METHODS, KNNIndex
from tokenkit.ops.nearest import nearest_code
from tokenkit.quantizers.base import (
    Quantizer,
    QuantizerConfig,
    QuantizerOutput,
    _fp32,
    straight_through,
    usage_stats,
)

NO_CODEBOOK, AUTO_CODEBOOK, FITTED_CODEBOOK = 0, 1, 2


@dataclass
class VPConfig(QuantizerConfig):
    dim: int = 64  # C, width of the latents the quantizer receives
    latent_dim: int = 4  # d, the perturbation / quantization space (paper: d = 4 for K = 1024)
    codebook_size: int = 1024  # K of the codebook fitted after training
    eta: float = 1.0  # Eq. 3 radius scale (code default; calibrate with estimate_eta)
    k_nn: int = 8  # k of the density estimate, Eq. 4 (code default)
    queue_size: int | None = None  # |S|; None: K * round(4 d) (M = 16 at d = 4); the code: K * round(16 d)
    update_probability: float = 0.01  # per-token chance of entering the queue
    metropolis_hastings: bool = True  # False: always accept (the paper's "w/o MH" ablation)
    norm_mean_weight: float = 0.1  # lambda1 of L_norm (code preset 'none-var')
    norm_var_weight: float = 0.07  # lambda2 of L_norm
    norm_reduction: str = "mean"  # "mean" over d (code) or "sum" (the paper's squared norms)
    kmeans_iters: int = 50  # Lloyd iterations of the post-training codebook fit
    auto_fit: bool = True  # eval without a fitted codebook: fit on the queue (warn) or raise
    knn_method: str = "auto"  # "auto", "tiled" (addmm tiles) or "kdtree" (scipy, CPU)
    seed: int = 0  # queue initialisation and k-means seeding (the same on every rank)


@dataclass
class Perturbation:
    """What the operator T did to a batch of latents ``(n, d)``."""

    step: Tensor  # the proposal step u = z' - z (n, d)
    delta: Tensor  # z~ - z: u where accepted, else zero (n, d)
    accepted: Tensor  # bool (n,)
    radius: Tensor  # R(z) = eta D_M(z) (n,)
    alpha: Tensor  # acceptance probability (n,)


# -- the operator T, Eq. 3-9 ---------------------------------------------------------------------
QUEUE_SAMPLES_PER_CODE = 4.0  # our default M / d; the authors' code uses 16 (cluster_size_rate)


def default_queue_size(codebook_size: int, latent_dim: int, per_dim: float = QUEUE_SAMPLES_PER_CODE) -> int:
    """|S| = K * round(per_dim * d), so that M = round(per_dim * d) (the paper does not fix |S|).

    Our default ``per_dim = 4`` (|S| = 16,384, M = 16 at K = 1024, d = 4) makes the two kNN queries
    of a step about 3x cheaper than the authors' code's ``per_dim = 16`` (|S| = 65,536, M = 64) at
    the same reconstruction quality on our benchmark (docs/vp_fsp.md); pass
    ``queue_size=K * round(16 * d)`` for the code's queue.
    """
    return codebook_size * round(per_dim * latent_dim)


def neighbours_per_code(queue_size: int, codebook_size: int) -> int:
    """M = ceil(|S| / K), Eq. 3: queue samples per equal-mass cell."""
    return math.ceil(queue_size / codebook_size)


def uniform_ball(radius: Tensor, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """Samples ``(n, dim)`` uniform in d-balls of radii ``radius`` ``(n,)`` (Eq. 5 recipe)."""
    n = radius.shape[0]
    v = torch.randn(n, dim, device=radius.device, generator=generator)
    rho = torch.rand(n, 1, device=radius.device, generator=generator)
    length = radius[:, None] * rho.pow(1.0 / dim)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12) * length


def acceptance_probability(
    step: Tensor, d_k: Tensor, d_m: Tensor, d_k_prop: Tensor, d_m_prop: Tensor, eta: float, dim: int
) -> Tensor:
    """Eq. 6-8: ``alpha = min(1, (D_k(z) D_M(z) / (D_k(z') D_M(z')))^d)`` where the reverse proposal
    can reach ``z`` (``||z - z'|| <= R(z') = eta D_M(z')``), else 0. Computed in log space."""
    tiny = torch.finfo(torch.float32).tiny
    log_ratio = dim * (
        d_k.clamp_min(tiny).log()
        + d_m.clamp_min(tiny).log()
        - d_k_prop.clamp_min(tiny).log()
        - d_m_prop.clamp_min(tiny).log()
    )
    alpha = log_ratio.clamp(max=0.0).exp()
    return torch.where(step <= eta * d_m_prop, alpha, torch.zeros_like(alpha))


@torch.no_grad()
def scale_radius(z: Tensor, queue: Tensor | KNNIndex, codebook_size: int, eta: float = 1.0) -> Tensor:
    """Eq. 3: ``R(z) = eta * D_M(z|S)`` with ``M = ceil(|S|/K)``, for latents ``z`` ``(n, d)``."""
    index = queue if isinstance(queue, KNNIndex) else KNNIndex(queue)
    m = neighbours_per_code(len(index), codebook_size)
    return eta * index.query(z, m)[:, 0]


@torch.no_grad()
def perturb(
    z: Tensor,
    queue: Tensor,
    codebook_size: int,
    eta: float = 1.0,
    k_nn: int = 8,
    metropolis_hastings: bool = True,
    knn_method: str = "auto",
    generator: torch.Generator | None = None,
) -> Perturbation:
    """The perturbation operator T (Eq. 3-9) on detached latents ``z`` ``(n, d)`` and queue ``(|S|, d)``.

    One top-M query over the queue gives ``D_k`` and ``D_M`` for ``z``, a second one for the
    proposals ``z'``; both use the same index.
    """
    n, d = z.shape
    m = neighbours_per_code(queue.shape[0], codebook_size)
    index = KNNIndex(queue, method=knn_method)
    d_k, d_m = index.query(z, [k_nn, m]).unbind(1)
    radius = eta * d_m
    step = uniform_ball(radius, d, generator)
    if metropolis_hastings:
        d_k_prop, d_m_prop = index.query(z + step, [k_nn, m]).unbind(1)
        alpha = acceptance_probability(step.norm(dim=1), d_k, d_m, d_k_prop, d_m_prop, eta, d)
        accepted = torch.rand(n, device=z.device, generator=generator) < alpha
    else:
        alpha = torch.ones(n, device=z.device)
        accepted = torch.ones(n, dtype=torch.bool, device=z.device)
    delta = torch.where(accepted[:, None], step, torch.zeros_like(step))
    return Perturbation(step=step, delta=delta, accepted=accepted, radius=radius, alpha=alpha)


# -- L_norm, Sec. 3.2.3 (FSP uses it on its pre-activations, Eq. 14) ----------------------------------
def moment_loss(
    z: Tensor,
    mask: Tensor | None,
    mean_weight: float,
    var_weight: float,
    target_var: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """``lambda1 ||mu||^2 + lambda2 ||sigma^2 - target||^2`` over the valid tokens of ``z`` ``(..., d)``;
    per-dimension batch mean and unbiased variance; ``reduction`` "sum" (norms) or "mean" over d."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"norm_reduction must be 'mean' or 'sum', got {reduction!r}")
    flat = z.reshape(-1, z.shape[-1])
    if mask is not None:
        flat = flat[mask.reshape(-1)]
    if flat.shape[0] < 2 or (mean_weight == 0 and var_weight == 0):
        return z.new_zeros(())
    mu = flat.mean(0)
    var = flat.var(0, unbiased=True)
    reduce = torch.mean if reduction == "mean" else torch.sum
    return mean_weight * reduce(mu.square()) + var_weight * reduce((var - target_var).square())


# -- eta calibration ------------------------------------------------------------------------------
@torch.no_grad()
def estimate_eta(
    latent_dim: int = 4,
    codebook_size: int = 1024,
    queue_size: int | None = None,
    num_queries: int = 8192,
    kmeans_iters: int = 20,
    seed: int = 0,
) -> float:
    """Calibrate eta (Eq. 3): the scale at which T's proposals are as long as a K-code quantizer's error.

    Queue and queries are N(0, I) (what L_norm aims at); the codebook is K-means on the queue.
    A proposal uniform in the ball of radius ``eta D_M(z)`` has mean length ``eta D_M(z) d / (d + 1)``,
    so ``eta = E||q(z) - z|| / E[D_M(z) d / (d + 1)]``. (Metropolis-Hastings then rejects part of the
    proposals; the eta-independent acceptance is not part of the calibration, as in the authors'
    helper, whose ratio is likewise taken against the perturbation scale.)
    """
    queue_size = queue_size or default_queue_size(codebook_size, latent_dim)
    g = torch.Generator().manual_seed(seed)
    queue = torch.randn(queue_size, latent_dim, generator=g)
    queries = torch.randn(num_queries, latent_dim, generator=g)
    codebook, _ = kmeans(queue, codebook_size, iters=kmeans_iters, generator=g)
    quantization_error = (queries - codebook[nearest_code(queries, codebook)]).norm(dim=1).mean()
    proposal_length = scale_radius(queries, queue, codebook_size).mean() * latent_dim / (latent_dim + 1)
    return float(quantization_error / proposal_length)


def _gather_rows(x: Tensor) -> Tensor:
    """Concatenate a different number of rows ``(n_r, d)`` from every rank (same order on all)."""
    if not distributed.is_distributed():
        return x
    counts = distributed.all_gather_cat(torch.tensor([x.shape[0]], device=x.device))
    padded = x.new_zeros(int(counts.max()), x.shape[1])
    padded[: x.shape[0]] = x
    parts = distributed.all_gather_cat(padded).split(padded.shape[0])
    return torch.cat([p[: int(c)] for p, c in zip(parts, counts, strict=True)])


class VPQuantizer(Quantizer):
    """VP-VAE: kNN-scaled Metropolis-Hastings perturbation in training, K-means codebook at eval."""

    Config = VPConfig
    description = "VP-VAE vector perturbation: kNN-scaled MH noise in training, k-means codebook after"

    def __init__(self, config: VPConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        c = self.config
        self._check_config(c)
        d = c.latent_dim
        self.project_in = nn.Linear(c.dim, d) if c.dim != d else nn.Identity()  # P_down
        self.project_out = nn.Linear(d, c.dim) if c.dim != d else nn.Identity()  # P_up
        g = torch.Generator().manual_seed(c.seed)
        self.register_buffer("queue", torch.randn(self.queue_size, d, generator=g))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("codebook_low", torch.zeros(c.codebook_size, d))
        self.register_buffer("codebook_state", torch.tensor(NO_CODEBOOK))

    @staticmethod
    def _check_config(c: VPConfig) -> None:
        if c.latent_dim < 1 or c.dim < 1 or c.codebook_size < 1:
            raise ValueError(f"dim, latent_dim and codebook_size must be positive, got {c}")
        if c.eta <= 0:
            raise ValueError(f"eta must be > 0 (Eq. 3 radius scale), got {c.eta}")
        if not 0.0 <= c.update_probability <= 1.0:
            raise ValueError(f"update_probability must lie in [0, 1], got {c.update_probability}")
        size = c.queue_size or default_queue_size(c.codebook_size, c.latent_dim)
        if size < max(c.k_nn, 1) or c.k_nn < 1:
            raise ValueError(f"need 1 <= k_nn <= queue_size, got k_nn={c.k_nn}, queue_size={size}")
        if c.knn_method not in METHODS:
            raise ValueError(f"knn_method must be one of {METHODS}, got {c.knn_method!r}")
        if c.norm_reduction not in ("mean", "sum"):
            raise ValueError(f"norm_reduction must be 'mean' or 'sum', got {c.norm_reduction!r}")

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def queue_size(self) -> int:
        c = self.config
        return c.queue_size or default_queue_size(c.codebook_size, c.latent_dim)

    @property
    def has_codebook(self) -> bool:
        return int(self.codebook_state) != NO_CODEBOOK

    # -- codebook after training (Sec. 3.2.4) --------------------------------------------------
    @torch.no_grad()
    def fit_codebook(self, latents: Tensor, max_points: int | None = None, seed: int | None = None) -> Tensor:
        """The paper's codebook: K-means (K-means++ seeding) over encoder outputs of the training set.

        ``latents``: quantizer inputs ``(..., dim)`` collected from the training data (on every rank
        under torch.distributed; the fit uses all ranks' latents and gives every rank the same
        codebook). ``max_points`` subsamples each rank's latents first. Returns the ``(K, d)``
        codebook in the low-dimensional space.
        """
        if latents.dim() < 1 or latents.shape[-1] != self.dim:
            raise ValueError(f"fit_codebook expects latents (..., {self.dim}), got {tuple(latents.shape)}")
        latents = latents.detach().float().to(self.queue.device)
        with _fp32(latents):
            z = self.project_in(latents).reshape(-1, self.config.latent_dim)
        seed = self.config.seed if seed is None else seed
        if max_points is not None and z.shape[0] > max_points:
            g = torch.Generator().manual_seed(seed)
            z = z[torch.randperm(z.shape[0], generator=g)[:max_points].to(z.device)]
        counts = distributed.all_gather_cat(torch.tensor([z.shape[0]], device=z.device))
        rows = int(counts.min())
        if rows * distributed.world_size() < self.codebook_size:
            raise ValueError(
                f"fit_codebook needs at least K={self.codebook_size} latents, got {int(counts.sum())}; "
                f"collect encoder outputs from more training batches"
            )
        codebook = kmeans_consistent(z[:rows], self.codebook_size, iters=self.config.kmeans_iters, seed=seed)
        self._set_codebook(codebook, FITTED_CODEBOOK)
        return self.codebook_low.clone()

    @torch.no_grad()
    def fit_codebook_from_queue(self) -> Tensor:
        """The authors' code's codebook: K-means (K-means++ seeding) over the queue samples."""
        self._set_codebook(self._kmeans_on_queue(), FITTED_CODEBOOK)
        return self.codebook_low.clone()

    def _kmeans_on_queue(self) -> Tensor:
        g = torch.Generator().manual_seed(self.config.seed)
        codebook, _ = kmeans(self.queue, self.codebook_size, iters=self.config.kmeans_iters, generator=g)
        return distributed.broadcast(codebook.contiguous())

    def _set_codebook(self, codebook: Tensor, state: int) -> None:
        self.codebook_low.copy_(codebook)
        self.codebook_state.fill_(state)

    def train(self, mode: bool = True) -> VPQuantizer:
        """Switching to eval with no fitted codebook fits one on the queue (``auto_fit``), so that eval
        forwards and ``encode`` never change the state."""
        super().train(mode)
        if not mode and self.config.auto_fit and not self.has_codebook:
            self._auto_fit(stacklevel=4)
        return self

    @torch.no_grad()
    def _auto_fit(self, stacklevel: int) -> None:
        warnings.warn(
            "VPQuantizer: no codebook fitted, so one is fitted now by k-means on the latent queue "
            "(the authors' code variant). For the paper's codebook call fit_codebook(latents) with "
            "encoder outputs of the training data after training.",
            UserWarning,
            stacklevel=stacklevel,
        )
        self._set_codebook(self._kmeans_on_queue(), AUTO_CODEBOOK)

    def _fitted_codebook(self) -> Tensor:
        if not self.has_codebook:
            if not self.config.auto_fit:
                raise RuntimeError(
                    "VPQuantizer has no codebook yet: VP-VAE trains without one. After training call "
                    "quantizer.fit_codebook(latents) with encoder outputs of the training data (the paper) "
                    "or quantizer.fit_codebook_from_queue() (the authors' code), or set auto_fit=True"
                )
            self._auto_fit(stacklevel=5)  # only reached when no eval() switch happened
        return self.codebook_low

    def estimate_eta(self, num_queries: int = 8192, seed: int = 0) -> float:
        """:func:`estimate_eta` for this quantizer's d, K, |S| and k."""
        c = self.config
        return estimate_eta(c.latent_dim, c.codebook_size, self.queue_size, num_queries, seed=seed)

    # -- the queue ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _push(self, z: Tensor) -> None:
        """FIFO-push a Bernoulli(update_probability) subsample of valid latents ``(n, d)`` of all ranks."""
        keep = torch.rand(z.shape[0], device=z.device) < self.config.update_probability
        samples = _gather_rows(z[keep])[-self.queue_size :]
        if samples.shape[0] == 0:
            return
        slots = (int(self.queue_ptr) + torch.arange(samples.shape[0], device=z.device)) % self.queue_size
        self.queue[slots] = samples
        self.queue_ptr.fill_((int(self.queue_ptr) + samples.shape[0]) % self.queue_size)
        if int(self.codebook_state) == AUTO_CODEBOOK:  # an automatic codebook follows the queue
            self.codebook_state.fill_(NO_CODEBOOK)

    # -- Quantizer contract ----------------------------------------------------------------------
    def codebook(self) -> Tensor:
        with torch.no_grad():
            return self.decode(torch.arange(self.codebook_size, device=self.queue.device))

    def _encode(self, z: Tensor, mask: Tensor | None) -> Tensor:
        low = self.project_in(z).reshape(-1, self.config.latent_dim)
        return nearest_code(low, self._fitted_codebook()).reshape(z.shape[:-1])

    def _decode(self, indices: Tensor) -> Tensor:
        return self.project_out(self._fitted_codebook()[indices])

    def _quantize(self, z: Tensor, mask: Tensor | None) -> QuantizerOutput:
        c = self.config
        low = self.project_in(z)
        loss = moment_loss(low, mask, c.norm_mean_weight, c.norm_var_weight, 1.0, c.norm_reduction)
        stats: dict[str, Tensor] = {"norm_loss": loss.detach()}
        flat = low.detach().reshape(-1, c.latent_dim)
        if self.training:
            delta = self._training_delta(flat, mask, stats)
            perturbed = low + delta.reshape(low.shape)  # z~ = z + sg(delta), Eq. 9
            if self.has_codebook:
                indices = nearest_code(flat, self.codebook_low).reshape(z.shape[:-1])
            else:  # no codebook exists while VP trains
                indices = torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)
            quantized = self.project_out(perturbed)
        else:
            codebook = self._fitted_codebook()
            indices = nearest_code(flat, codebook).reshape(z.shape[:-1])  # Eq. 12
            quantized = self.project_out(straight_through(low, codebook[indices]))
        stats.update(usage_stats(indices, self.codebook_size, mask))
        return QuantizerOutput(quantized=quantized, indices=indices, loss=loss, stats=stats)

    @torch.no_grad()
    def _training_delta(self, flat: Tensor, mask: Tensor | None, stats: dict[str, Tensor]) -> Tensor:
        c = self.config
        valid = flat if mask is None else flat[mask.reshape(-1)]
        t = perturb(valid, self.queue, c.codebook_size, c.eta, c.k_nn, c.metropolis_hastings, c.knn_method)
        delta = t.delta if mask is None else torch.zeros_like(flat).index_put_((mask.reshape(-1),), t.delta)
        if valid.shape[0] > 0:
            stats["accept_rate"] = t.accepted.float().mean()
            stats["radius"] = t.radius.mean()
        self._push(valid)
        return delta
