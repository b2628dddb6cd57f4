"""Paired comparison of two methods' test accuracies: pairing, bootstrap CI, Wilcoxon signed-rank, verdict.

The Adverse Compression test (a compressed model against ``small_peft`` at the same throughput level) and
``report --compare A,B`` both go through :func:`compare`: pair the runs, take differences A - B in accuracy
points, then decide with :func:`verdict`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed, so the same runs always give the same interval
CONFIDENCE = 0.95
ALPHA = 0.05
EQUIVALENCE_MARGIN = 1.0  # accuracy points: a CI inside (-1, +1) means "no difference that matters"
# Below 6 pairs the exact two-sided Wilcoxon p cannot fall under 0.05 (n=5: 2/32 = 0.0625), and a bootstrap
# of so few differences is too narrow to support an equivalence claim either.
MIN_PAIRS = 6

WORSE, BETTER, EQUIVALENT, INCONCLUSIVE = "worse", "better", "equivalent", "inconclusive"
UNKNOWN_SEED = -1  # a run that records no seed: paired with the other side's runs that record none


@dataclass(frozen=True)
class Pairs:
    """Accuracy pairs of two sets of runs: ``a`` and ``b`` per unit, and how the units were formed."""

    table: pd.DataFrame  # columns: task, seed (NaN when paired on task means), a, b, diff
    pairing: str  # "task x seed" or "task means"
    note: str = ""

    @property
    def diffs(self) -> np.ndarray:
        return self.table["diff"].to_numpy(dtype=float)


@dataclass(frozen=True)
class PairedResult:
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str
    pairing: str
    note: str


def pair_runs(a: pd.DataFrame, b: pd.DataFrame, value: str = "test_acc_best") -> Pairs:
    """Pair two sets of runs (columns ``task``, ``seed``, ``value``) on the tasks both have.

    Units are (task, seed): on every shared task the seeds both sides ran, each side's runs of one seed averaged;
    a run whose seed the other side lacks on that task (a failed or missing partner) is left out, and the note
    names it. Only when some shared task has no seed in common is each task's mean over its own seeds one unit
    instead (on every task, so that the units are alike), and the note says which tasks forced it.
    """
    a, b = (side.assign(seed=side["seed"].fillna(UNKNOWN_SEED)) for side in (a, b))  # groupby would drop them
    shared = sorted(set(a["task"]) & set(b["task"]))
    notes = []
    unmatched = sorted(set(a["task"]) ^ set(b["task"]))
    if unmatched:
        notes.append(f"tasks on one side only, left out: {', '.join(unmatched)}")
    a, b = a[a["task"].isin(shared)], b[b["task"].isin(shared)]
    seeds_a, seeds_b = (side.groupby("task")["seed"].apply(frozenset) for side in (a, b))
    apart = [task for task in shared if not seeds_a[task] & seeds_b[task]]
    if not apart:
        keys, pairing = ["task", "seed"], "task x seed"
        alone = [f"{task} seed {_seed(seed)}" for task in shared
                 for seed in sorted(seeds_a[task] ^ seeds_b[task], key=_seed)]
        if alone:
            notes.append(f"runs whose task and seed the other side lacks, left out: {', '.join(alone)}")
    else:
        keys, pairing = ["task"], "task means"
        notes.append("no seed in common on " + ", ".join(
            f"{task} (seeds {_seed_list(seeds_a[task])} vs {_seed_list(seeds_b[task])})" for task in apart)
            + ", so paired on per-task means")
    merged = pd.merge(a.groupby(keys)[value].mean().rename("a"), b.groupby(keys)[value].mean().rename("b"),
                      left_index=True, right_index=True).reset_index()
    if "seed" not in merged:
        merged["seed"] = np.nan
    merged["diff"] = merged["a"] - merged["b"]
    return Pairs(merged[["task", "seed", "a", "b", "diff"]], pairing, "; ".join(notes))


def _seed(seed: object) -> object:
    return int(seed) if isinstance(seed, float) and seed.is_integer() else seed


def _seed_list(seeds: frozenset) -> str:
    return ",".join(str(_seed(seed)) for seed in sorted(seeds, key=_seed))


def bootstrap_ci(diffs: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean difference (resampling units with replacement)."""
    diffs = np.asarray(diffs, dtype=float)
    if diffs.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(n_resamples, diffs.size))].mean(axis=1)
    tail = 50 * (1 - confidence)
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def wilcoxon_p(diffs: np.ndarray) -> float:
    """Two-sided paired Wilcoxon signed-rank p (zero differences dropped, as Wilcoxon did); 1.0 when every
    difference is zero, where scipy would divide by zero; NaN with no pairs."""
    diffs = np.asarray(diffs, dtype=float)
    if diffs.size == 0:
        return math.nan
    if not np.any(diffs):
        return 1.0
    return float(scipy_stats.wilcoxon(diffs, alternative="two-sided", zero_method="wilcox").pvalue)


def verdict(n: int, ci_low: float, ci_high: float, p_value: float, *, alpha: float = ALPHA,
            margin: float = EQUIVALENCE_MARGIN) -> str:
    """``worse`` when the whole CI is below 0 and p < alpha; ``better`` when it is above 0 and p < alpha;
    ``equivalent`` when the CI lies inside (-margin, +margin); otherwise ``inconclusive``. Fewer than
    :data:`MIN_PAIRS` pairs are always inconclusive.

    A significant difference wins over equivalence: a CI of [-0.8, -0.2] with p < 0.05 is ``worse``, even
    though the loss is under a point (the mean difference in the table shows how large it is).
    """
    if n < MIN_PAIRS or math.isnan(p_value):
        return INCONCLUSIVE
    if ci_high < 0 and p_value < alpha:
        return WORSE
    if ci_low > 0 and p_value < alpha:
        return BETTER
    if -margin < ci_low and ci_high < margin:
        return EQUIVALENT
    return INCONCLUSIVE


def paired_test(pairs: Pairs) -> PairedResult:
    diffs = pairs.diffs
    low, high = bootstrap_ci(diffs)
    p_value = wilcoxon_p(diffs)
    notes = [pairs.note] if pairs.note else []
    if 0 < diffs.size < MIN_PAIRS:
        notes.append(f"only {diffs.size} pair(s): at least {MIN_PAIRS} are needed for a verdict")
    mean = float(diffs.mean()) if diffs.size else math.nan
    return PairedResult(int(diffs.size), mean, low, high, p_value, verdict(diffs.size, low, high, p_value),
                        pairs.pairing, "; ".join(notes))


def compare(a: pd.DataFrame, b: pd.DataFrame, value: str = "test_acc_best") -> PairedResult:
    """Pair the runs of ``a`` and ``b`` and test the differences a - b."""
    return paired_test(pair_runs(a, b, value))
