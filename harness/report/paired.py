"""Paired tests over :mod:`harness.stats`: the Adverse Compression test (every compressed row against the
small-model baseline at its level) and ``--compare A,B``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd

from .. import stats
from ..errors import UserError
from ..vocabulary import SMALL_MODEL_BASELINE, is_uncompressed, level_rank
from .board import distinct
from .schema import DEFAULT_ACCURACY, ROW_KEY, Methods, accuracy_choice, sort_rows, with_accuracy

ADVERSE_LABELS = {stats.WORSE: "adverse", stats.BETTER: "compression wins", stats.EQUIVALENT: "equivalent",
                  stats.INCONCLUSIVE: "inconclusive"}
ADVERSE_COLUMNS = ["device_name", "backbone", "method", "compression", "small_backbone", "matched_throughput_ratio",
                   "n", "pairing", "mean_diff", "ci_low", "ci_high", "wilcoxon_p", "verdict", "note"]
COMPARE_COLUMNS = ["device_name", "backbone", "a", "b", "n", "pairing", "mean_diff", "ci_low", "ci_high",
                   "wilcoxon_p", "verdict", "note"]


def _result_columns(result: stats.PairedResult, labels: Mapping[str, str]) -> dict:
    return {"n": result.n, "pairing": result.pairing, "mean_diff": result.mean_diff, "ci_low": result.ci_low,
            "ci_high": result.ci_high, "wilcoxon_p": result.p_value, "verdict": labels[result.verdict],
            "note": result.note}


def _select(runs: pd.DataFrame, device: str, backbone: str, method: str, level: str) -> pd.DataFrame:
    return runs[(runs["device_name"] == device) & (runs["backbone"] == backbone) & (runs["method"] == method)
                & (runs["compression"] == level)]


MATCH_TOLERANCE = 0.10  # the Adverse Compression test's default: partners within ±10 % of equal throughput


def unmatched(ratio: float, tolerance: float) -> bool:
    """Whether a small model running ``ratio`` times the compressed model's throughput is too far from equal
    speed for a verdict (a ratio the run did not record counts as unmatched)."""
    return not abs(ratio - 1) <= tolerance + 1e-9  # 1.1 - 1 is 0.10000000000000009: the bound itself is matched


def adverse_compression(runs: pd.DataFrame, accuracy: str = DEFAULT_ACCURACY,
                        tolerance: float = MATCH_TOLERANCE) -> pd.DataFrame:
    """Every compressed row (compression other than ``none``) of every method that is not a small-model baseline,
    against the method(s) whose recorded role is ``small-model baseline`` (``small_peft`` among the built-ins),
    throughput-matched to that level, on the same device and big backbone. Differences are compressed - baseline,
    in points of ``accuracy`` (:data:`~.schema.ACCURACIES`; another than the default adds the first column
    ``accuracy``, holding its name). Should several baseline methods have run at a level, each gets a row, its
    note naming it.

    The test is of equal throughput: a pair whose ``matched_throughput_ratio`` (the small model's throughput over
    the compressed model's, :func:`_throughput_ratio`) is off 1 by more than ``tolerance`` gets no verdict but
    ``unmatched (ratio x)``; its difference and CI are still given.
    """
    choice = accuracy_choice(accuracy)
    methods = Methods.of(runs)
    baselines = methods.with_role(SMALL_MODEL_BASELINE)
    rows = []
    for (device, backbone, method, level), compressed in runs.groupby(ROW_KEY):
        if method in baselines or is_uncompressed(level):
            continue
        key = {"device_name": device, "backbone": backbone, "method": method, "compression": level}
        partners = [(name, small) for name in baselines
                    if not (small := _select(runs, device, backbone, name, level)).empty]
        if not partners:
            rows.append({**key, "n": 0, "verdict": f"no {SMALL_MODEL_BASELINE} run", "note": f"run "
                         f"{_baseline_names(baselines)} at compression {level} on this device and backbone"})
        for name, small in partners:
            ratio, how = _throughput_ratio(small, compressed, runs)
            row = {**key, "small_backbone": distinct(small["small_backbone"]), "matched_throughput_ratio": ratio,
                   **_result_columns(stats.compare(compressed, small, choice.column), ADVERSE_LABELS)}
            notes = ([f"against {name}"] if len(partners) > 1 else []) + ([how] if how else [])
            if unmatched(ratio, tolerance):
                row["verdict"] = f"unmatched (ratio {ratio:.2f}x)" if ratio == ratio else "unmatched (ratio unknown)"
                notes.append(f"the small model runs {ratio:.2f}x the compressed model's throughput, outside "
                             f"±{tolerance:.0%} of equal speed: no verdict (a family size nearer its speed is "
                             f"needed)" if ratio == ratio else "no throughput of either side to match them by: "
                                                               "no verdict")
            row["note"] = "; ".join(part for part in (*notes, row["note"]) if part)
            rows.append(row)
    return with_accuracy(sort_rows(pd.DataFrame(rows, columns=ADVERSE_COLUMNS), methods), choice)


def _median_ratio(numerator: pd.DataFrame, denominator: pd.DataFrame) -> float:
    return numerator["infer_img_per_s"].median() / denominator["infer_img_per_s"].median()


def _throughput_ratio(small: pd.DataFrame, compressed: pd.DataFrame, runs: pd.DataFrame) -> tuple[float, str]:
    """The small model's throughput over the compressed model's, and how it was had when not as the baseline
    recorded it. The baseline's own ratio is of a side-by-side timing against the method its rows name
    (``matched_method``); another compressed method at that level is set against it through the two methods'
    rows: ratio x (matched method's median img/s / this method's). Records that name no matched method (written
    before they did) apply their ratio to every method; a baseline that records no ratio, the rows' medians."""
    recorded = small["matched_throughput_ratio"].mean() if "matched_throughput_ratio" in small else float("nan")
    if recorded != recorded:
        return _median_ratio(small, compressed), ""
    against = distinct(small["matched_method"]) if "matched_method" in small else None
    method = distinct(compressed["method"])
    if not isinstance(against, str) or against == method:
        return recorded, ""
    first = compressed.iloc[0]
    reference = _select(runs, first["device_name"], first["backbone"], against, first["compression"])
    if reference.empty:
        return _median_ratio(small, compressed), (f"ratio of the rows' median throughputs ({against}, which the "
                                                  f"small model was timed against, has no runs here)")
    factor = _median_ratio(reference, compressed)
    return recorded * factor, (f"ratio {recorded:.2f} (timed side by side with {against}) x {factor:.2f} "
                               f"({against}'s median img/s over {method}'s)")


def _baseline_names(baselines: Sequence[str]) -> str:
    """What to run for a missing partner: the baseline methods other runs used, or the role itself."""
    return " or ".join(baselines) if baselines else f"a method with role '{SMALL_MODEL_BASELINE}'"


@dataclass(frozen=True)
class Selector:
    """A method, optionally pinned to one compression level (``tome@high``)."""

    method: str
    level: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Selector":
        method, _, level = text.strip().partition("@")
        if not method:
            raise UserError(f"--compare needs method names, as in A,B or A@high,B; got '{text}'")
        return cls(method, level or None)

    def __str__(self) -> str:
        return self.method if is_uncompressed(self.level) else f"{self.method}@{self.level}"


def parse_compare(text: str) -> tuple[Selector, Selector]:
    parts = [part for part in text.split(",") if part.strip()]
    if len(parts) != 2:
        raise UserError(f"--compare takes two methods separated by a comma (A,B), not '{text}'")
    first, second = Selector.parse(parts[0]), Selector.parse(parts[1])
    if first == second:  # every difference would be zero by construction, its test a certain "no difference"
        raise UserError(f"--compare {text}: compares {first} with itself; name two methods, or two levels of one "
                        f"(A@low,A@high)")
    return first, second


def check_compare(runs: pd.DataFrame, comparisons: Sequence[tuple[Selector, Selector]], where: str) -> None:
    """Refuse a ``--compare`` naming a method, or a pinned level, that no finished run in ``runs`` (the runs
    loaded from ``where``) has: a typo there would otherwise only empty its table. The report calls it before
    writing anything."""
    methods = Methods.of(runs)
    for pair in comparisons:
        for selector in pair:
            levels = _ran_levels(runs, selector.method)
            if not levels:
                known = ", ".join(sorted(set(runs["method"]), key=methods.rank))
                problem = f"no finished runs of method '{selector.method}' in {where} (methods there: {known})"
            elif selector.level is not None and selector.level not in levels:
                problem = (f"no finished runs of method '{selector.method}' at compression '{selector.level}' in "
                           f"{where} (its levels there: {', '.join(levels)})")
            else:
                continue
            raise UserError(f"--compare {pair[0]},{pair[1]}: {problem}")


def level_pairs(levels_a: Sequence[str], levels_b: Sequence[str]) -> list[tuple[str, str]]:
    """The levels both methods ran, each against itself; if they share none, every level of A against every
    level of B (e.g. ``tome`` at low and high against uncompressed ``lora``)."""
    shared = [level for level in levels_a if level in levels_b]
    if shared:
        return [(level, level) for level in shared]
    return [(a, b) for a in levels_a for b in levels_b]


def compare_methods(runs: pd.DataFrame, a: Selector, b: Selector, accuracy: str = DEFAULT_ACCURACY) -> pd.DataFrame:
    """The paired test of A - B on each device and backbone, at the levels :func:`level_pairs` gives, in points
    of ``accuracy`` (as in :func:`adverse_compression`, the first column ``accuracy`` when not the default)."""
    choice = accuracy_choice(accuracy)
    labels = {stats.WORSE: f"{a.method} worse", stats.BETTER: f"{a.method} better",
              stats.EQUIVALENT: "equivalent", stats.INCONCLUSIVE: "inconclusive"}
    rows = []
    for (device, backbone), group in runs.groupby(["device_name", "backbone"]):
        levels = [_levels(group, selector) for selector in (a, b)]
        for level_a, level_b in level_pairs(*levels):
            result = stats.compare(_select(group, device, backbone, a.method, level_a),
                                   _select(group, device, backbone, b.method, level_b), choice.column)
            rows.append({"device_name": device, "backbone": backbone, "a": str(Selector(a.method, level_a)),
                         "b": str(Selector(b.method, level_b)), **_result_columns(result, labels)})
    return with_accuracy(pd.DataFrame(rows, columns=COMPARE_COLUMNS), choice)


def _ran_levels(runs: pd.DataFrame, method: str) -> list[str]:
    """The levels ``method`` ran at in ``runs``, mildest first."""
    return sorted(set(runs.loc[runs["method"] == method, "compression"]), key=level_rank)


def _levels(runs: pd.DataFrame, selector: Selector) -> list[str]:
    found = _ran_levels(runs, selector.method)
    return found if selector.level is None else [level for level in found if level == selector.level]
