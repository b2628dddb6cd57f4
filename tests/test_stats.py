import math
import warnings

import numpy as np
import pandas as pd
import pytest

from harness import stats


def _runs(accuracies: dict[str, list[float]]) -> pd.DataFrame:
    """Runs of one method: task -> accuracy per seed (seed = position)."""
    return pd.DataFrame([{"task": task, "seed": seed, "test_acc_best": acc}
                         for task, values in accuracies.items() for seed, acc in enumerate(values)])


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    diffs = np.random.default_rng(3).normal(-0.5, 2.0, 12)
    low, high = stats.bootstrap_ci(diffs)
    assert (low, high) == stats.bootstrap_ci(diffs)  # same seed, same interval
    assert low < diffs.mean() < high
    assert stats.bootstrap_ci(diffs, seed=1) != (low, high)
    # The percentile interval of resampled means is narrower than the spread of the differences themselves.
    assert diffs.min() < low and high < diffs.max()


def test_bootstrap_ci_of_constant_differences_is_a_point_and_empty_is_nan():
    assert stats.bootstrap_ci(np.full(7, -2.0)) == (-2.0, -2.0)
    assert all(math.isnan(bound) for bound in stats.bootstrap_ci(np.array([])))


def test_wilcoxon_handles_all_zero_and_small_samples():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy would warn (0/0) on all-zero differences
        assert stats.wilcoxon_p(np.zeros(8)) == 1.0
    assert stats.wilcoxon_p(np.arange(1.0, 6.0)) == pytest.approx(2 / 2**5)  # n=5: the smallest p, above 0.05
    assert stats.wilcoxon_p(np.arange(1.0, 7.0)) == pytest.approx(2 / 2**6)
    assert math.isnan(stats.wilcoxon_p(np.array([])))


@pytest.mark.parametrize("n, low, high, p, expected", [
    (10, -3.0, -1.0, 0.01, stats.WORSE),
    (10, 1.0, 3.0, 0.01, stats.BETTER),
    (10, -0.6, 0.4, 0.5, stats.EQUIVALENT),       # inside +-1 point, not significant
    (10, -0.8, -0.2, 0.01, stats.WORSE),         # significant beats equivalent
    (10, -2.5, 0.8, 0.3, stats.INCONCLUSIVE),    # wide CI
    (10, -3.0, -1.0, 0.08, stats.INCONCLUSIVE),  # CI below 0 but p too large
    (5, -3.0, -1.0, 0.01, stats.INCONCLUSIVE),   # too few pairs
    (5, -0.2, 0.2, 0.9, stats.INCONCLUSIVE),     # too few pairs to claim equivalence
])
def test_verdict_rule(n, low, high, p, expected):
    assert stats.verdict(n, low, high, p) == expected


def test_pairs_on_task_and_seed_when_both_ran_the_same_seeds():
    a = _runs({"count": [50, 52], "cells": [80, 82]})
    b = _runs({"count": [51, 55], "cells": [80, 80], "digits": [70, 70]})
    pairs = stats.pair_runs(a, b)
    assert pairs.pairing == "task x seed" and len(pairs.table) == 4
    assert sorted(pairs.diffs) == [-3.0, -1.0, 0.0, 2.0]
    assert "digits" in pairs.note  # the unmatched task is named


def test_a_run_without_its_partner_is_left_out_and_the_other_units_stay_paired_by_seed():
    """One failed run must not collapse the test to task means: with a seed effect both methods share (+5 per
    seed) and a true difference of exactly -3, the pairs on the units both have give -3 and keep their count."""
    tasks = ["count", "cells", "digits", "photos", "orientation"]
    a = _runs({task: [50 + 5 * seed - 3 for seed in range(3)] for task in tasks})
    b = _runs({task: [50 + 5 * seed for seed in range(3)] for task in tasks})
    b = b[~((b["task"] == "cells") & (b["seed"] == 2))]
    pairs = stats.pair_runs(a, b)
    assert pairs.pairing == "task x seed" and len(pairs.table) == 14 and set(pairs.diffs) == {-3.0}
    assert "left out: cells seed 2" in pairs.note


def test_falls_back_to_task_means_when_a_task_has_no_seed_in_common():
    a = _runs({"count": [50, 52, 54], "cells": [80, 82, 84]})
    b = _runs({"count": [50], "cells": [81]}).assign(seed=lambda runs: runs["seed"] + 7)
    pairs = stats.pair_runs(a, b)
    assert pairs.pairing == "task means" and sorted(pairs.diffs) == [1.0, 2.0]
    assert pairs.note == ("no seed in common on cells (seeds 0,1,2 vs 7), count (seeds 0,1,2 vs 7), so paired on "
                          "per-task means")


@pytest.mark.parametrize("shift, noise, expected", [(-3.0, 0.3, stats.WORSE), (3.0, 0.3, stats.BETTER),
                                                    (0.0, 2.5, stats.INCONCLUSIVE), (0.1, 0.2, stats.EQUIVALENT)])
def test_compare_reaches_the_verdict_of_constructed_cases(shift, noise, expected):
    rng = np.random.default_rng(0)
    tasks = ["digits", "photos", "cells", "count", "orientation"]
    b = _runs({task: [60.0 + i, 61.0 + i] for i, task in enumerate(tasks)})
    signs = np.array([1, -1] * 5)  # alternating noise around the shift, so the mean shift is exact
    a = b.assign(test_acc_best=b["test_acc_best"] + shift + signs * noise * rng.uniform(0.5, 1, 10))
    result = stats.compare(a, b)
    assert result.n == 10 and result.verdict == expected
    assert result.ci_low <= result.mean_diff <= result.ci_high
