"""Fixed-width time buckets of a series: count, min, max, mean and standard deviation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

RESOLUTIONS_MS = {"1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}


@dataclass(frozen=True, slots=True)
class Buckets:
    t_ms: npt.NDArray[np.int64]  # start of each bucket that holds data
    count: npt.NDArray[np.int64]
    minimum: npt.NDArray[np.float64]
    maximum: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]  # population standard deviation


def bucketise(t_ms: npt.NDArray[np.int64], value: npt.NDArray[np.float64],
              width_ms: int) -> Buckets:
    """Statistics per bucket of ``width_ms`` (aligned on the epoch, so UTC days for 1d)."""
    keys, inverse, count = np.unique(t_ms // width_ms, return_inverse=True, return_counts=True)
    total = np.bincount(inverse, weights=value, minlength=len(keys))
    mean = total / np.maximum(count, 1)
    square = np.bincount(inverse, weights=(value - mean[inverse]) ** 2, minlength=len(keys))
    minimum = np.full(len(keys), np.inf)
    maximum = np.full(len(keys), -np.inf)
    np.minimum.at(minimum, inverse, value)
    np.maximum.at(maximum, inverse, value)
    return Buckets((keys * width_ms).astype(np.int64), count.astype(np.int64), minimum,
                   maximum, mean, np.sqrt(square / np.maximum(count, 1)))
