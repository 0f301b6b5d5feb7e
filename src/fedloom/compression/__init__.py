"""Compression: links of the update chain that change how an update is represented.

:class:`FixedPoint` encodes float updates as integers mod 2^k, which secure aggregation masks
and sums.
"""

from fedloom.compression._fixed_point import FixedPoint

__all__ = ["FixedPoint"]
