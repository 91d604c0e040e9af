"""Hot kernels shared by the quantizers: nearest-neighbour search, batched assignment, k-means."""

from tokenkit.ops.nearest import nearest_code, squared_distances_to

__all__ = ["nearest_code", "squared_distances_to"]
