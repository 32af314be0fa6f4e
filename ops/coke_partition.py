"""CoKe with coarse labels: how each head's clusters are shared among the superclasses (ops/coke_state.py)."""
from __future__ import annotations

from collections.abc import Sequence


def partition_clusters(num_clusters: int, superclass_sizes: Sequence[int]) -> list[int]:
    """Clusters per superclass: >= 1 each, the rest in proportion to the sizes (largest remainder)."""
    num_classes = len(superclass_sizes)
    if num_classes > num_clusters:
        raise ValueError(f"{num_classes} superclasses need at least as many clusters per head, got {num_clusters}")
    total = sum(superclass_sizes)
    spare = num_clusters - num_classes
    quotas = [spare * size / total if total > 0 else spare / num_classes for size in superclass_sizes]
    shares = [int(q) for q in quotas]
    by_remainder = sorted(range(num_classes), key=lambda c: (-(quotas[c] - shares[c]), c))
    for c in by_remainder[: spare - sum(shares)]:
        shares[c] += 1
    return [1 + share for share in shares]
