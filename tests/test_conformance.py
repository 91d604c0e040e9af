"""Every installed quantizer (built-in or plugin) passes the conformance kit; the kit catches bugs.

The first half runs each check of :mod:`tokenkit.testing` on each name in
``tokenkit.quantizers.available()`` with a small config; a quantizer whose module does not import
fails here with its name and error. The second half feeds the kit deliberately broken quantizers
and asserts that the right check fails, so a passing kit means something.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tokenkit.quantizers as tq
from tokenkit.quantizers.nearest import NearestQuantizer
from tokenkit.testing import check_quantizer, check_quantizer_name, quantizer_checks

CHECK_NAMES = [name for name, _ in quantizer_checks()]


def small_configs(cls: type[tq.Quantizer]) -> list[dict]:
    """Candidate small configs for ``cls``, from the fields its Config has; the default config last."""
    names = {f.name for f in dataclasses.fields(cls.Config)}
    small: dict = {}
    if "dim" in names:
        small["dim"] = 8
    if "codebook_size" in names:
        small["codebook_size"] = 32
    if "levels" in names:
        small["levels"] = [8, 4]
    candidates = [small]
    if "levels" in small and "dim" in small:  # FSQ-style without a projection: one dim per level
        candidates.append({**small, "dim": len(small["levels"])})
    candidates.append({})
    return candidates


def small_factory(name: str):
    """A zero-arg factory for a small instance of quantizer ``name`` (fails naming a broken plugin)."""
    cls = tq.get(name)  # raises PluginLoadError naming the plugin and its import error
    errors = []
    for config in small_configs(cls):
        try:
            cls(cls.Config(**config))
        except (TypeError, ValueError) as exc:
            errors.append(f"{config}: {exc}")
            continue
        return lambda: tq.create(name, **config)
    raise AssertionError(f"quantizer {name!r}: no small config could be built: {errors}")


@pytest.mark.parametrize("check_name", CHECK_NAMES)
@pytest.mark.parametrize("name", tq.available())
def test_installed_quantizer_conforms(name: str, check_name: str) -> None:
    factory = small_factory(name)
    check = dict(quantizer_checks())[check_name]
    check(factory)


def test_check_list_covers_the_contract() -> None:
    assert CHECK_NAMES == [
        "output_type",
        "shapes_and_dtypes",
        "indices_in_range",
        "loss_and_stats_finite",
        "masks",
        "encode_decode_roundtrip",
        "state_dict_roundtrip",
        "gradients",
        "eval_determinism",
        "autocast",
        "bad_input",
    ]


def test_check_quantizer_name_and_factory_only() -> None:
    check_quantizer_name("nearest", dim=4, codebook_size=16)
    # every keyword goes to the config, none to the kit
    with pytest.raises(AssertionError, match=r"factory raised TypeError: .* no option\(s\) \['seed'\]"):
        check_quantizer_name("nearest", dim=4, codebook_size=16, seed=1)
    check_quantizer(lambda: NearestQuantizer(dim=4, codebook_size=16), n_tokens=4, batch=3, seed=1)
    with pytest.raises(TypeError, match="zero-argument callable"):
        check_quantizer("nearest")  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="factory returned Linear, not a tokenkit.quantizers.Quantizer"):
        check_quantizer(lambda: torch.nn.Linear(4, 4))  # type: ignore[arg-type,return-value]


def test_kit_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_quantizer(lambda: NearestQuantizer(dim=4, codebook_size=8))
    assert torch.equal(torch.rand(3), expected)


# -- the kit must catch broken quantizers -------------------------------------------------------
class PaddingLeaks(NearestQuantizer):
    """Ignores the mask: padded positions enter the loss."""

    def _quantize(self, z, mask):
        return super()._quantize(z, None)


class LiveStats(NearestQuantizer):
    """Stats still attached to the graph."""

    def _quantize(self, z, mask):
        out = super()._quantize(z, mask)
        out.stats["commitment"] = (z - out.quantized).square().mean()
        return out


class NoisyEval(NearestQuantizer):
    """Adds noise to the output even in eval mode."""

    def _quantize(self, z, mask):
        out = super()._quantize(z, mask)
        out.quantized = out.quantized + 1e-2 * torch.randn_like(out.quantized)
        return out


class HiddenState(NearestQuantizer):
    """Keeps a trained offset in a plain attribute, so state_dict loses it."""

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.offset = 0.0

    def _quantize(self, z, mask):
        if self.training:
            self.offset = 0.5
        return super()._quantize(z, mask)

    def _encode(self, z, mask):
        return super()._encode(z - self.offset, mask)


class DetachedOutput(NearestQuantizer):
    """Forgets the straight-through estimator."""

    def _quantize(self, z, mask):
        out = super()._quantize(z, mask)
        out.quantized = out.quantized.detach()
        return out


class ForwardDisagreesWithDecode(NearestQuantizer):
    """Eval forward returns z itself instead of the code vectors."""

    def _quantize(self, z, mask):
        out = super()._quantize(z, mask)
        out.quantized = z.clone()
        return out


class WrongCodebook(NearestQuantizer):
    """codebook() returns something other than the vectors decode gives."""

    def codebook(self):
        return 2.0 * self.embedding.detach()


class BadUsage(NearestQuantizer):
    """Reports usage as a count instead of a fraction."""

    def _quantize(self, z, mask):
        out = super()._quantize(z, mask)
        out.stats["usage"] = out.stats["usage"] * self.codebook_size
        return out


class AlwaysFloat32(NearestQuantizer):
    """Returns float32 whatever the input dtype."""

    def forward(self, z, mask=None):
        out = super().forward(z, mask)
        out.quantized = out.quantized.float()
        return out


class UpdatesInEval(NearestQuantizer):
    """Moves its codebook on every forward, even in eval mode."""

    def _quantize(self, z, mask):
        out = super()._quantize(z, mask)
        with torch.no_grad():
            self.embedding.mul_(0.9)
        return out


class NoValidation(NearestQuantizer):
    """Skips the base class checks on input."""

    def forward(self, z, mask=None):
        out = self._quantize(z.float(), mask)
        out.quantized = out.quantized.to(z.dtype)
        return out

    def decode(self, indices):
        return self.embedding[indices.clamp(0, self.codebook_size - 1)]


@pytest.mark.parametrize(
    "cls, failing_check",
    [
        (PaddingLeaks, "masks"),
        (LiveStats, "output_type"),
        (NoisyEval, "encode_decode_roundtrip"),
        (HiddenState, "state_dict_roundtrip"),
        (DetachedOutput, "gradients"),
        (ForwardDisagreesWithDecode, "encode_decode_roundtrip"),
        (WrongCodebook, "encode_decode_roundtrip"),
        (BadUsage, "indices_in_range"),
        (AlwaysFloat32, "autocast"),
        (UpdatesInEval, "eval_determinism"),
        (NoValidation, "bad_input"),
    ],
)
def test_kit_catches_broken_quantizer(cls: type[NearestQuantizer], failing_check: str) -> None:
    def factory():
        q = cls(dim=8, codebook_size=32)
        with torch.no_grad():  # spread codes so that nearest codes are well separated
            q.embedding.copy_(torch.randn(32, 8))
        return q

    expected = f"conformance check '{failing_check}' failed for {cls.__name__}"
    with pytest.raises(AssertionError, match=expected):
        dict(quantizer_checks())[failing_check](factory)
    with pytest.raises(AssertionError, match=cls.__name__):
        check_quantizer(factory)
