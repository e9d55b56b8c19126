"""Connected components of an edge list, vectorised with numpy (hooking + pointer jumping)."""
from __future__ import annotations

import numpy as np


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label per node: the smallest node id of its component.

    Each round hooks the larger root of every edge onto the smaller one, then compresses paths
    by pointer jumping until every node points at a root; it ends when no edge joins two roots.
    """
    label = np.arange(n, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    while True:
        la, lb = label[a], label[b]
        differ = la != lb
        if not differ.any():
            return label
        lo = np.minimum(la[differ], lb[differ])
        hi = np.maximum(la[differ], lb[differ])
        np.minimum.at(label, hi, lo)
        while True:
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
