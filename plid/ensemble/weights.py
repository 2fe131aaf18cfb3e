"""The weight grid of the paper's ensemble and the search over it.

Weights lie on a grid in [0, 1] with a fixed step (0.1 in the paper), so a candidate is an integer vector
``v`` in ``{0, ..., n}^M`` (``n = 1 / step``, M models) standing for the weights ``v * step``. The ensemble
``sum_i w_i M_i / sum_i w_i`` only depends on the direction of ``v``: vectors that are multiples of each other
(``(1, 2)``, ``(2, 4)``, ...) give the same prediction. Each direction is scored once, through its primitive
vector (entries with greatest common divisor 1); the all-zero vector is no ensemble and is skipped.

For 8 models at step 0.1 this dedup removes less than 1 % of the 11^8 vectors: 212,607,425 directions are
left, affordable for classification, far too many for a segmentation validation set (the rates: see
benchmarks/ensemble_search.py). So
when the unique grid holds more than ``max_candidates`` directions the search goes coarse to fine: every
direction of the finest grid whose step is a multiple of ``step`` (0.2, 0.5, 1 for step 0.1) and that fits the
budget, then a hill climb on the fine grid from the ``top_k`` best, moving each coordinate one step up, down or
not at all (3^M - 1 moves), until the ``top_k`` best stop changing. Every candidate it reaches is a point of
the paper's grid, but the optimum of the whole grid is not guaranteed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from plid.errors import UserInputError

# scores a (B, M) int64 batch of candidates, higher is better; returns (B,) float64
Scorer = Callable[[np.ndarray], np.ndarray]


def grid_levels(step: float) -> int:
    """``n`` with ``n * step == 1``; the step must divide 1."""
    n = round(1 / step) if step > 0 else 0
    if n < 1 or not math.isclose(n * step, 1.0, rel_tol=0, abs_tol=1e-9):
        raise UserInputError(f"search.step={step} must divide 1 (0.1, 0.2, 0.25, 0.5, ...)")
    return n


def _mobius(d: int) -> int:
    result, k = 1, 2
    while k * k <= d:
        if d % k == 0:
            d //= k
            if d % k == 0:
                return 0
            result = -result
        k += 1
    return -result if d > 1 else result


def count_unique(num_models: int, levels: int) -> int:
    """Number of distinct directions in ``{0..levels}^num_models`` minus zero (Möbius inversion over the gcd)."""
    return sum(_mobius(d) * ((levels // d + 1) ** num_models - 1) for d in range(1, levels + 1))


def iter_unique(num_models: int, levels: int, chunk: int = 1 << 20) -> Iterator[np.ndarray]:
    """All primitive vectors of ``{0..levels}^num_models`` (one per direction), in lexicographic order, in chunks
    of at most ``chunk`` raw vectors; each chunk is a (B, M) int64 array."""
    base = levels + 1
    total = base**num_models
    powers = base ** np.arange(num_models - 1, -1, -1, dtype=np.int64)
    for start in range(1, total, chunk):  # index 0 is the zero vector
        index = np.arange(start, min(start + chunk, total), dtype=np.int64)
        vectors = (index[:, None] // powers) % base
        yield vectors[np.gcd.reduce(vectors, axis=1) == 1]


def primitive(vectors: np.ndarray) -> np.ndarray:
    """Each non-zero row divided by the gcd of its entries."""
    return vectors // np.gcd.reduce(vectors, axis=1, keepdims=True)


@dataclass
class SearchResult:
    best: np.ndarray  # (M,) int64 primitive vector, weights = best * step up to scale
    score: float  # exact score of ``best``
    levels: int
    strategy: str  # "exhaustive" or "coarse-to-fine"
    unique_grid: int  # directions in the full grid
    scored: int  # candidates scored by the (possibly sampled) scorer
    coarse_levels: int | None = None
    rounds: int = 0
    finalists: list[tuple[list[int], float]] = field(default_factory=list)  # exactly re-scored, best first

    def weights(self) -> np.ndarray:
        """Grid weights with the largest one as large as the grid allows (e.g. (1, 3) at step 0.1 -> 0.3, 0.9)."""
        return largest_multiple(self.best, self.levels) / self.levels


class _TopK:
    """The k best distinct candidates seen so far; ties keep the earlier one."""

    def __init__(self, k: int, num_models: int):
        self.k = k
        self.vectors = np.zeros((0, num_models), dtype=np.int64)
        self.scores = np.zeros(0)

    def add(self, vectors: np.ndarray, scores: np.ndarray) -> None:
        scores = np.nan_to_num(scores, nan=-np.inf)
        if len(self.scores) == self.k:  # only a score above the k-th best can enter (ties keep the earlier one)
            better = scores > self.scores[-1]
            vectors, scores = vectors[better], scores[better]
        vectors = np.concatenate([self.vectors, vectors])
        scores = np.concatenate([self.scores, scores])
        _, first = np.unique(vectors, axis=0, return_index=True)
        first = np.sort(first)
        vectors, scores = vectors[first], scores[first]
        keep = np.argsort(-scores, kind="stable")[: self.k]
        self.vectors, self.scores = vectors[keep], scores[keep]


def _score_all(scorer: Scorer, batches, top: _TopK, batch_size: int) -> int:
    """Scores batches of primitive vectors into ``top``; returns how many were scored."""
    scored = 0
    for vectors in batches:
        for start in range(0, len(vectors), batch_size):
            part = vectors[start : start + batch_size]
            top.add(part, scorer(part))
            scored += len(part)
    return scored


def largest_multiple(vector: np.ndarray, levels: int) -> np.ndarray:
    """The multiple of a primitive vector with the largest entries still on the grid: its finest representation."""
    return vector * (levels // int(vector.max()))


def _neighbours(vector: np.ndarray, levels: int) -> np.ndarray:
    """Directions one grid step away from the finest representation of ``vector`` in any subset of coordinates
    (3^M - 1 moves), within the grid, as primitive vectors."""
    m = len(vector)
    moves = np.stack(np.meshgrid(*[np.array([-1, 0, 1])] * m, indexing="ij"), -1).reshape(-1, m)
    out = largest_multiple(vector, levels)[None] + moves
    out = out[((out >= 0) & (out <= levels)).all(1) & (out.sum(1) > 0)]
    return np.unique(primitive(out), axis=0)


def search_weights(scorer: Scorer, num_models: int, step: float = 0.1, *, exact_scorer: Scorer | None = None,
                   max_candidates: int | None = 500_000, top_k: int = 16, batch_size: int = 1 << 16,
                   max_rounds: int = 50) -> SearchResult:
    """The grid direction with the highest score.

    ``scorer`` ranks candidates (it may estimate, e.g. on a pixel sample); the ``top_k`` best are re-scored
    with ``exact_scorer`` (default: ``scorer``) and the best exact score wins, ties going to the earlier
    candidate in lexicographic grid order. Exhaustive when the grid has at most ``max_candidates`` directions
    (or ``max_candidates`` is None), coarse to fine otherwise (see the module docstring).
    """
    exact_scorer = exact_scorer or scorer
    levels = grid_levels(step)
    unique = count_unique(num_models, levels)
    top = _TopK(top_k, num_models)
    if max_candidates is None or unique <= max_candidates:
        scored = _score_all(scorer, iter_unique(num_models, levels), top, batch_size)
        result = SearchResult(np.zeros(num_models, np.int64), -np.inf, levels, "exhaustive", unique, scored)
    else:
        fits = [d for d in range(1, levels + 1) if levels % d == 0 and count_unique(num_models, d) <= max_candidates]
        if not fits:
            raise UserInputError(f"search.max_candidates={max_candidates} is too small for {num_models} models")
        coarse = max(fits)
        # a coarse primitive vector is also a fine one: the same direction
        scored = _score_all(scorer, iter_unique(num_models, coarse), top, batch_size)
        # hill climb from every coarse finalist at once: score the neighbours of the current top-k until it stops changing
        visited = {tuple(v) for v in top.vectors}
        rounds = 0
        while rounds < max_rounds:
            rounds += 1
            fresh = [n for v in top.vectors for n in _neighbours(v, levels) if tuple(n) not in visited]
            if not fresh:
                break
            fresh = np.unique(np.array(fresh), axis=0)
            visited.update(map(tuple, fresh))
            before = top.vectors.copy()
            scored += _score_all(scorer, [fresh], top, batch_size)
            if np.array_equal(before, top.vectors):
                break
        result = SearchResult(np.zeros(num_models, np.int64), -np.inf, levels, "coarse-to-fine", unique, scored,
                              coarse_levels=coarse, rounds=rounds)
    finalists = top.vectors
    exact = np.nan_to_num(np.asarray(exact_scorer(finalists), dtype=np.float64), nan=-np.inf)
    # best exact score first; among equals, the earlier candidate in grid order
    order = np.lexsort((*finalists.T[::-1], -exact))
    result.best, result.score = finalists[order[0]], float(exact[order[0]])
    result.finalists = [(finalists[i].tolist(), float(exact[i])) for i in order]
    return result
