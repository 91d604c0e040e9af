"""Conformance kit: the checks every tokenkit quantizer, built-in or plugin, must pass.

Like scikit-learn's ``check_estimator``: a plugin author calls one function in their own tests::

    from tokenkit.testing import check_quantizer
    from my_package.lfq import LFQuantizer

    def test_conformance():
        check_quantizer(lambda: LFQuantizer(dim=8, codebook_size=256))

``factory`` is a zero-argument callable that returns a *fresh* quantizer each call. Each check
raises :class:`AssertionError` whose message names the check and what went wrong. To run the
checks one by one (one test each), parametrize over :func:`quantizer_checks`::

    @pytest.mark.parametrize("name, check", list(quantizer_checks()))
    def test_each(name, check):
        check(make_quantizer)

What is checked (the contract in ``tokenkit/quantizers/base.py``): the output type and its fields,
shapes and dtypes with one or two leading dims, index range, a finite scalar loss, detached
``perplexity``/``usage`` stats, masks (padding changes nothing), the encode/decode round trip, the
state_dict round trip, gradient flow to the input, determinism in eval mode, autocast, and clear
errors on bad input.

The kit is generic: train-mode forwards may be stochastic (Gumbel, VP, FSP), so outputs are compared
in eval mode only, or in train mode from the same seed on inputs of the same shape. Quantizers with
a data-dependent initialisation in their first training forward (k-means init, delayed init) get
one training forward on a warm-up batch of at least K latents before any eval comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from tokenkit.quantizers.base import Quantizer, QuantizerOutput

__all__ = ["check_quantizer", "check_quantizer_name", "quantizer_checks"]

QuantizerFactory = Callable[[], Quantizer]
Check = Callable[..., None]

_CHECKS: list[tuple[str, Check]] = []
_WARMUP_SEED_OFFSET = 1000
_MAX_WARMUP_LATENTS = 4096


def check_quantizer(factory: QuantizerFactory, *, n_tokens: int = 8, batch: int = 2, seed: int = 0) -> None:
    """Run every conformance check on the quantizers ``factory()`` builds; raise on the first failure."""
    if isinstance(factory, str) or not callable(factory):
        raise TypeError(
            "check_quantizer takes a zero-argument callable returning a fresh Quantizer, e.g. "
            "lambda: NearestQuantizer(dim=8, codebook_size=32); for a registered name use "
            "check_quantizer_name(name, **config)"
        )
    for _, check in quantizer_checks():
        check(factory, n_tokens=n_tokens, batch=batch, seed=seed)


def check_quantizer_name(name: str, /, **config: Any) -> None:
    """:func:`check_quantizer` on ``tokenkit.quantizers.create(name, **config)``, default kit settings.

    Every keyword goes to the quantizer's config (some configs have a ``seed`` field); to change
    ``n_tokens``, ``batch`` or ``seed`` of the kit, call :func:`check_quantizer` with a factory.
    """
    from tokenkit.quantizers.registry import create

    check_quantizer(lambda: create(name, **config))


def quantizer_checks() -> Iterator[tuple[str, Check]]:
    """Yield ``(check_name, check)``; ``check(factory, *, n_tokens=8, batch=2, seed=0)`` raises on failure."""
    yield from _CHECKS


# -- machinery ----------------------------------------------------------------------------------
class _CheckFailure(AssertionError):
    pass


def _check(fn: Callable[[_Probe], None]) -> Check:
    """Register ``fn`` as a check; wrap it so every failure names the check and the quantizer."""
    name = fn.__name__.removeprefix("check_")

    def run(factory: QuantizerFactory, *, n_tokens: int = 8, batch: int = 2, seed: int = 0) -> None:
        with torch.random.fork_rng(devices=[]):
            probe = _Probe(factory, n_tokens, batch, seed, name)
            try:
                fn(probe)
            except _CheckFailure:
                raise
            except AssertionError as exc:
                raise _CheckFailure(f"conformance check {name!r} failed for {probe.label}: {exc}") from exc
            except Exception as exc:
                raise _CheckFailure(
                    f"conformance check {name!r} failed for {probe.label}: unexpected "
                    f"{type(exc).__name__}: {exc}"
                ) from exc

    run.__name__ = fn.__name__
    run.__qualname__ = fn.__qualname__
    run.__doc__ = fn.__doc__
    _CHECKS.append((name, run))
    return run


class _Probe:
    """Builds fresh quantizers from the factory and the latents a check feeds them."""

    def __init__(self, factory: QuantizerFactory, n_tokens: int, batch: int, seed: int, check: str) -> None:
        self.factory = factory
        self.seed = seed
        self.check = check
        self.label = getattr(factory, "__name__", "factory")
        q = self.fresh()
        self.label = type(q).__name__
        k, d = q.codebook_size, q.dim
        for what, value in (("codebook_size", k), ("dim", d)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _CheckFailure(
                    f"conformance check {check!r} failed for {self.label}: {what} must be a positive int, "
                    f"got {value!r}"
                )
        self.K, self.D = k, d
        self.N = max(1, min(n_tokens, k))
        self.B = max(1, batch)

    def fresh(self, seed_offset: int = 0) -> Quantizer:
        torch.manual_seed(self.seed + seed_offset)
        try:
            q = self.factory()
        except Exception as exc:
            raise _CheckFailure(
                f"conformance check {self.check!r} failed: the factory raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(q, Quantizer):
            raise _CheckFailure(
                f"conformance check {self.check!r} failed: the factory returned {type(q).__name__}, not a "
                f"tokenkit.quantizers.Quantizer (pass a zero-argument callable that builds a fresh one)"
            )
        return q

    def latents(self, *lead: int, offset: int = 0, n: int | None = None) -> Tensor:
        g = torch.Generator().manual_seed(self.seed + 7919 * (offset + 1))
        shape = (*(lead or (self.B,)), self.N if n is None else n, self.D)
        return torch.randn(shape, generator=g)

    def warmup_latents(self) -> Tensor:
        """A batch of at least K latents (capped), enough for a k-means or delayed initialisation."""
        batch = max(self.B, math.ceil(min(self.K, _MAX_WARMUP_LATENTS) / self.N))
        return self.latents(batch, offset=_WARMUP_SEED_OFFSET)

    def ready(self, seed_offset: int = 0) -> Quantizer:
        """A fresh quantizer after one training forward (data-dependent init), then in eval mode."""
        q = self.fresh(seed_offset)
        q.train()
        with torch.no_grad():
            q(self.warmup_latents())
        return q.eval()


def _fail(message: str) -> None:
    raise AssertionError(message)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _same(a: Tensor, b: Tensor, what: str, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    _expect(tuple(a.shape) == tuple(b.shape), f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.is_floating_point() or b.is_floating_point():
        close = torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol)
        if not close:
            diff = (a.float() - b.float()).abs().max().item()
            _fail(f"{what}: values differ (max abs difference {diff:.3g}, tolerance {atol:g} + {rtol:g}*|x|)")
    else:
        _expect(torch.equal(a, b), f"{what}: {int((a != b).sum())} of {a.numel()} values differ")


def _same_output(a: QuantizerOutput, b: QuantizerOutput, what: str, mask: Tensor | None = None) -> None:
    """Indices, quantized vectors (at valid positions), loss and stats agree."""
    qa, qb, ia, ib = a.quantized, b.quantized, a.indices, b.indices
    if mask is not None:
        qa, qb, ia, ib = qa[mask], qb[mask], ia[mask], ib[mask]
    _same(ia, ib, f"{what}: indices")
    _same(qa, qb, f"{what}: quantized")
    _same(a.loss.detach(), b.loss.detach(), f"{what}: loss", atol=1e-5, rtol=1e-4)
    keys_a, keys_b = sorted(a.stats), sorted(b.stats)
    _expect(keys_a == keys_b, f"{what}: stats keys differ, {keys_a} vs {keys_b}")
    for key in keys_a:
        sa, sb = torch.as_tensor(a.stats[key]), torch.as_tensor(b.stats[key])
        _same(sa, sb, f"{what}: stats[{key!r}]", rtol=1e-4)


def _state(q: Quantizer) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in q.state_dict().items()}


def _same_state(a: dict[str, Tensor], b: dict[str, Tensor], what: str) -> None:
    _expect(set(a) == set(b), f"{what}: state_dict keys differ, {sorted(set(a) ^ set(b))}")
    for key in a:
        _same(a[key], b[key], f"{what}: state_dict[{key!r}]", atol=1e-5, rtol=1e-4)


def _forward(q: Quantizer, z: Tensor, mask: Tensor | None = None, seed: int | None = None) -> QuantizerOutput:
    if seed is not None:
        torch.manual_seed(seed)
    out = q(z) if mask is None else q(z, mask)
    _expect(
        isinstance(out, QuantizerOutput),
        f"forward must return tokenkit.quantizers.QuantizerOutput, got {type(out).__name__}",
    )
    return out


def _prefix_mask(probe: _Probe) -> tuple[Tensor, int]:
    """A ``(B, N)`` mask keeping the first half of the positions of every sample, and that length."""
    keep = max(1, probe.N // 2)
    mask = torch.zeros(probe.B, probe.N, dtype=torch.bool)
    mask[:, :keep] = True
    return mask, keep


# -- the checks, in the order they run ------------------------------------------------------------
@_check
def check_output_type(p: _Probe) -> None:
    """forward returns a QuantizerOutput: quantized, indices, a finite scalar loss, detached stats."""
    for mode in ("train", "eval"):
        q = p.ready()
        q.train(mode == "train")
        z = p.latents().requires_grad_(True)
        out = _forward(q, z, seed=p.seed)
        m = f"{mode} mode"
        for name in ("quantized", "indices", "loss", "stats"):
            _expect(hasattr(out, name), f"{m}: QuantizerOutput has no field {name!r}")
        _expect(isinstance(out.quantized, Tensor), f"{m}: quantized is {type(out.quantized).__name__}")
        _expect(isinstance(out.loss, Tensor), f"{m}: loss must be a Tensor, got {type(out.loss).__name__}")
        _expect(out.loss.dim() == 0, f"{m}: loss must be a scalar, got shape {tuple(out.loss.shape)}")
        _expect(out.loss.is_floating_point(), f"{m}: loss must be floating point, got {out.loss.dtype}")
        _expect(bool(torch.isfinite(out.loss)), f"{m}: loss is not finite ({out.loss.item()})")
        _expect(isinstance(out.stats, dict), f"{m}: stats must be a dict, got {type(out.stats).__name__}")
        for key in ("perplexity", "usage"):
            _expect(key in out.stats, f"{m}: stats lack {key!r} (have {sorted(out.stats)})")
        for key, value in out.stats.items():
            _expect(isinstance(value, Tensor), f"{m}: stats[{key!r}] must be a Tensor, got {value!r}")
            _expect(value.numel() == 1, f"{m}: stats[{key!r}] must be a scalar, shape {tuple(value.shape)}")
            _expect(not value.requires_grad, f"{m}: stats[{key!r}] is not detached (call .detach())")
            _expect(bool(torch.isfinite(value)), f"{m}: stats[{key!r}] is not finite ({value.item()})")


@_check
def check_shapes_and_dtypes(p: _Probe) -> None:
    """(B, N, D) and (2, B, N, D) give quantized of z's shape/dtype and long indices (..., N)."""
    q = p.ready()
    for lead in ((p.B,), (2, p.B)):
        z = p.latents(*lead)
        for mode in ("train", "eval"):
            q.train(mode == "train")
            with torch.no_grad():
                out = _forward(q, z, seed=p.seed)
            where = f"{mode} mode, input {tuple(z.shape)}"
            _expect(tuple(out.quantized.shape) == tuple(z.shape), f"{where}: quantized has shape "
                    f"{tuple(out.quantized.shape)}, expected {tuple(z.shape)}")
            _expect(out.quantized.dtype == z.dtype, f"{where}: quantized dtype {out.quantized.dtype}")
            _expect(tuple(out.indices.shape) == tuple(z.shape[:-1]), f"{where}: indices have shape "
                    f"{tuple(out.indices.shape)}, expected {tuple(z.shape[:-1])}")
            _expect(out.indices.dtype == torch.long, f"{where}: indices dtype {out.indices.dtype}")
            _expect(bool(torch.isfinite(out.quantized).all()), f"{where}: quantized has NaN/inf")
            _expect(out.loss.dim() == 0, f"{where}: loss has shape {tuple(out.loss.shape)}, expected scalar")
        q.eval()
        with torch.no_grad():
            out = _forward(q, z)
            if len(lead) == 2:
                again = _forward(q, z.reshape(2 * p.B, p.N, p.D))
                _same(out.indices.reshape(2 * p.B, p.N), again.indices,
                      "eval mode: indices of (2, B, N, D) vs the same latents as (2B, N, D)")
                _same(out.quantized.reshape(2 * p.B, p.N, p.D), again.quantized,
                      "eval mode: quantized of (2, B, N, D) vs the same latents as (2B, N, D)")


@_check
def check_indices_in_range(p: _Probe) -> None:
    """Indices from forward (train and eval) and encode lie in [0, K); eval stats match the indices."""
    q = p.ready()
    z = p.latents(2, p.B)
    for mode in ("train", "eval"):
        q.train(mode == "train")
        with torch.no_grad():
            out = _forward(q, z, seed=p.seed)
        lo, hi = int(out.indices.min()), int(out.indices.max())
        _expect(0 <= lo and hi < p.K, f"{mode} mode: indices in [{lo}, {hi}], outside [0, {p.K})")
    q.eval()
    enc = q.encode(z)
    _expect(enc.dtype == torch.long, f"encode returned {enc.dtype}, expected torch.long")
    _expect(tuple(enc.shape) == tuple(z.shape[:-1]), f"encode returned shape {tuple(enc.shape)}, "
            f"expected {tuple(z.shape[:-1])}")
    lo, hi = int(enc.min()), int(enc.max())
    _expect(0 <= lo and hi < p.K, f"encode: indices in [{lo}, {hi}], outside [0, {p.K})")
    with torch.no_grad():
        out = _forward(q, z)
    used = torch.unique(out.indices).numel()
    usage = float(out.stats["usage"])
    _expect(abs(usage - used / p.K) < 1e-5, f"eval mode: stats['usage'] = {usage:.6g}, but the batch uses "
            f"{used} of {p.K} codes ({used / p.K:.6g}); usage is the fraction of codes used in the batch")
    perplexity = float(out.stats["perplexity"])
    _expect(1 - 1e-4 <= perplexity <= p.K * (1 + 1e-4), f"eval mode: stats['perplexity'] = {perplexity:.6g} "
            f"outside [1, K={p.K}]")


@_check
def check_loss_and_stats_finite(p: _Probe) -> None:
    """The loss is a finite scalar and stats are finite scalars in train mode with gradients on."""
    q = p.ready()
    q.train()
    for lead in ((p.B,), (2, p.B)):
        z = p.latents(*lead, offset=3).requires_grad_(True)
        out = _forward(q, z, seed=p.seed)
        _expect(out.loss.dim() == 0 and bool(torch.isfinite(out.loss)),
                f"train mode, input {tuple(z.shape)}: loss must be a finite scalar, got {out.loss}")
        for key, value in out.stats.items():
            _expect(not value.requires_grad, f"train mode: stats[{key!r}] is not detached")
            _expect(bool(torch.isfinite(value)), f"train mode: stats[{key!r}] is not finite ({value})")


@_check
def check_masks(p: _Probe) -> None:
    """Padded positions change nothing: not the loss, stats, valid indices, nor codebook updates."""
    z = p.latents()
    mask, keep = _prefix_mask(p)
    # eval mode: a masked batch against the same batch with the padded positions cut off
    q = p.ready()
    with torch.no_grad():
        masked = _forward(q, z, mask)
        cut = _forward(q, z[:, :keep].contiguous())
    _expect(tuple(masked.indices.shape) == tuple(z.shape[:-1]), "masked forward: padded positions must still "
            f"get indices, got shape {tuple(masked.indices.shape)}")
    lo, hi = int(masked.indices.min()), int(masked.indices.max())
    _expect(0 <= lo and hi < p.K, f"masked forward: indices in [{lo}, {hi}], outside [0, {p.K})")
    masked_prefix = QuantizerOutput(
        masked.quantized[:, :keep], masked.indices[:, :keep], masked.loss, masked.stats
    )
    _same_output(masked_prefix, cut, f"eval mode, mask keeping the first {keep} of {p.N} positions vs "
                 "the batch with the padded positions cut off")
    enc_masked, enc_cut = q.encode(z, mask)[:, :keep], q.encode(z[:, :keep].contiguous())
    _same(enc_masked, enc_cut, "encode with a prefix mask vs encode of the cut batch")

    # train mode: same shape and seed, padded positions filled with different values
    other = z.clone()
    other[~mask] = 10.0 * p.latents(offset=5)[~mask]
    outs, states = [], []
    for x in (z, other):
        q = p.ready()
        q.train()
        with torch.no_grad():
            outs.append(_forward(q, x, mask, seed=p.seed + 1))
        states.append(_state(q))
    _same_output(outs[0], outs[1], "train mode, same mask, different values at padded positions", mask=mask)
    _same_state(states[0], states[1], "train mode, buffers after a forward whose padded positions differ "
                "(padded positions must add nothing to codebook updates)")


@_check
def check_encode_decode_roundtrip(p: _Probe) -> None:
    """Eval: forward(z).indices == encode(z), forward(z).quantized == decode(encode(z)) and
    codebook() == decode(arange(K))."""
    q = p.ready()
    for lead in ((p.B,), (2, p.B)):
        z = p.latents(*lead, offset=2)
        with torch.no_grad():
            out = _forward(q, z)
        indices = q.encode(z)
        _same(out.indices, indices, f"input {tuple(z.shape)}: forward(z).indices vs encode(z)")
        with torch.no_grad():
            decoded = q.decode(indices)
        _expect(tuple(decoded.shape) == tuple(z.shape), f"decode returned shape {tuple(decoded.shape)}, "
                f"expected {tuple(z.shape)}")
        _same(out.quantized, decoded, f"input {tuple(z.shape)}: forward(z).quantized vs decode(encode(z))",
              atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        table = q.decode(torch.arange(p.K)[None, :])
        codebook = q.codebook()
    _expect(tuple(table.shape) == (1, p.K, p.D), f"decode of all K codes gave shape {tuple(table.shape)}")
    _same(codebook, table[0], "codebook() vs decode(arange(K)) (the code vectors in input space)",
          atol=1e-5, rtol=1e-4)


@_check
def check_state_dict_roundtrip(p: _Probe) -> None:
    """A fresh instance loading the state_dict of a trained-one-step one encodes identically."""
    trained = p.fresh()
    trained.train()
    z = p.warmup_latents().requires_grad_(True)
    out = _forward(trained, z, seed=p.seed)
    w = torch.randn(out.quantized.shape, generator=torch.Generator().manual_seed(p.seed))
    ((out.quantized * w).sum() / w.numel() + out.loss).backward()
    with torch.no_grad():
        for param in trained.parameters():
            if param.grad is not None:
                param -= 0.1 * param.grad
    trained.eval()
    loaded = p.fresh(seed_offset=1)
    try:
        loaded.load_state_dict(trained.state_dict())
    except RuntimeError as exc:
        _fail(f"a fresh instance cannot load the state_dict of a trained one: {exc}")
    loaded.eval()
    _same_state(_state(trained), _state(loaded), "state_dict after loading")
    x = p.latents(offset=4)
    _same(trained.encode(x), loaded.encode(x), "encode of the trained instance vs the loaded fresh instance")
    with torch.no_grad():
        _same_output(_forward(trained, x), _forward(loaded, x), "eval forward, trained vs loaded instance")
        codes = torch.arange(p.K)
        _same(trained.decode(codes), loaded.decode(codes), "decode of every code, trained vs loaded instance")


@_check
def check_gradients(p: _Probe) -> None:
    """Train mode: backward of quantized (random weights) + loss gives finite, non-zero grads on z."""
    q = p.ready()
    q.train()
    for lead in ((p.B,), (2, p.B)):
        q.zero_grad(set_to_none=True)
        z = p.latents(*lead, offset=6).requires_grad_(True)
        out = _forward(q, z, seed=p.seed)
        _expect(out.quantized.requires_grad, f"input {tuple(z.shape)}: quantized does not require grad; "
                "gradients must reach z (straight-through or as the method defines)")
        w = torch.randn(out.quantized.shape, generator=torch.Generator().manual_seed(p.seed + 1))
        ((out.quantized * w).sum() + out.loss).backward()
        if z.grad is None:
            _fail(f"input {tuple(z.shape)}: no gradient reached z")
        _expect(bool(torch.isfinite(z.grad).all()), f"input {tuple(z.shape)}: gradient on z has NaN/inf")
        _expect(bool((z.grad != 0).any()), f"input {tuple(z.shape)}: gradient on z is all zero")
        for name, param in q.named_parameters():
            if param.grad is not None:
                _expect(bool(torch.isfinite(param.grad).all()), f"gradient of parameter {name!r} has NaN/inf")


@_check
def check_eval_determinism(p: _Probe) -> None:
    """Two eval forwards give identical outputs; encode and eval forward leave the state unchanged."""
    q = p.ready()
    z = p.latents(2, p.B, offset=8)
    before = _state(q)
    with torch.no_grad():
        first = _forward(q, z, seed=p.seed)
        second = _forward(q, z, seed=p.seed + 1)
    _same_output(first, second, "two eval forwards of the same latents (different RNG state)")
    _same(q.encode(z), q.encode(z), "two encodes of the same latents")
    _same_state(before, _state(q), "state_dict before vs after eval forwards and encodes "
                "(eval mode and encode must not update the codebook or any buffer)")
    twin = p.ready()
    with torch.no_grad():
        _same_output(first, _forward(twin, z), "eval forwards of two instances built and warmed up alike")


@_check
def check_autocast(p: _Probe) -> None:
    """Under bf16 autocast: forward works, indices equal fp32 ones, quantized keeps the input dtype."""
    q = p.ready()
    z = p.latents(offset=9)
    with torch.no_grad():
        ref = _forward(q, z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = _forward(q, z)
            auto_indices = q.encode(z)
    _same(auto.indices, ref.indices, "indices under torch.autocast(bfloat16) vs fp32 (quantize in fp32)")
    _same(auto_indices, ref.indices, "encode under torch.autocast(bfloat16) vs fp32")
    _expect(auto.quantized.dtype == z.dtype, f"under autocast quantized is {auto.quantized.dtype}, input "
            f"{z.dtype}: quantized must keep the input dtype")
    _same(auto.quantized, ref.quantized, "quantized under autocast vs fp32")
    zb = z.bfloat16()
    with torch.no_grad():
        low = _forward(q, zb)
        ref_low = _forward(q, zb.float())
    _expect(low.quantized.dtype == torch.bfloat16, f"bf16 input gave quantized of {low.quantized.dtype}")
    _same(low.indices, ref_low.indices, "indices of bf16 latents vs the same latents in fp32")
    q.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _forward(q, z.clone().requires_grad_(True), seed=p.seed)
    _expect(out.quantized.dtype == z.dtype, f"train mode under autocast: quantized is {out.quantized.dtype}")
    _expect(bool(torch.isfinite(out.loss)), "train mode under autocast: loss is not finite")


@_check
def check_bad_input(p: _Probe) -> None:
    """Wrong last dim and NaN raise ValueError; indices >= K in decode raise IndexError."""
    q = p.ready()
    cases: list[tuple[str, Callable[[], Any], type[Exception]]] = [
        ("latents with last dim D+1", lambda: q(torch.randn(p.B, p.N, p.D + 1)), ValueError),
        ("encode of latents with last dim D+1", lambda: q.encode(torch.zeros(p.B, p.N, p.D + 1)), ValueError),
        ("latents containing NaN", lambda: q(_with_nan(p.latents())), ValueError),
        ("encode of latents containing NaN", lambda: q.encode(_with_nan(p.latents())), ValueError),
        ("decode of an index equal to K", lambda: q.decode(torch.full((p.B, p.N), p.K)), IndexError),
        ("decode of a negative index", lambda: q.decode(torch.full((p.B, p.N), -1)), IndexError),
    ]
    for what, call, expected in cases:
        try:
            with torch.no_grad():
                call()
        except expected:
            continue
        except Exception as exc:
            _fail(f"{what} raised {type(exc).__name__} ({exc}), expected {expected.__name__}")
        _fail(f"{what} raised nothing, expected {expected.__name__} with a message naming the problem")


def _with_nan(z: Tensor) -> Tensor:
    z = z.clone()
    z.view(-1)[0] = float("nan")
    return z
