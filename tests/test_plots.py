import pandas as pd

from harness import report
from harness.report import plots


def _board(rows) -> pd.DataFrame:
    """A leaderboard with just the columns the plots read."""
    frame = pd.DataFrame([dict(suite="offline", device_name=device, backbone="vit_micro_base_patch4_32", method=method,
                               compression=level, acc_mean_tasks=acc, infer_img_per_s=speed, gmacs=gmacs,
                               train_peak_mem_mb=50.0, tasks=5)
                          for device, method, level, acc, speed, gmacs in rows])
    for name, (column, higher) in report.PARETO_METRICS.items():
        frame[f"pareto_{name}"] = report.pareto_front(frame[column], frame["acc_mean_tasks"], higher)
    return frame


ROWS = [("CPU A", "lora", "none", 70.0, 1000.0, 0.10), ("CPU A", "tome", "low", 68.0, 1800.0, 0.05),
        ("CPU A", "tome", "high", 60.0, 1500.0, 0.03), ("CPU A", "small_peft", "high", 62.0, 2500.0, 0.03)]


def _frontier_line(figure):
    (line,) = [line for line in figure.axes[0].get_lines() if line.get_linestyle() == "--"]
    return line


def test_frontier_is_a_step_line_through_the_frontier_points():
    board = _board(ROWS)
    throughput = _frontier_line(plots.pareto_figure(board, "throughput", "t"))
    assert throughput.get_drawstyle() == "steps-pre"  # more is better: the level drops at the faster point
    assert list(throughput.get_xdata()) == [1000.0, 1800.0, 2500.0]  # tome@high (1500 img/s, 60 %) is dominated
    gmacs = _frontier_line(plots.pareto_figure(board, "gmacs", "t"))
    assert gmacs.get_drawstyle() == "steps-post" and list(gmacs.get_xdata()) == [0.03, 0.05, 0.10]


def test_one_file_per_metric_and_format_and_per_device_when_several(tmp_path):
    written, notes = plots.write_pareto_plots(_board(ROWS), tmp_path / "one")
    assert sorted(path.name for path in written) == sorted(f"pareto_{metric}.{suffix}" for metric in
                                                           ("throughput", "gmacs", "memory") for suffix in ("png", "svg"))
    assert all(path.stat().st_size > 1000 for path in written) and notes == []
    two_devices = ROWS + [("NVIDIA H100 80GB HBM3", "lora", "none", 70.0, 9000.0, 0.10),
                          ("NVIDIA H100 80GB HBM3", "pyra", "low", float("nan"), 15000.0, 0.05)]
    written, notes = plots.write_pareto_plots(_board(two_devices), tmp_path / "two")
    assert {path.name for path in written} >= {"pareto_throughput_cpu-a.png", "pareto_gmacs_nvidia-h100-80gb-hbm3.svg"}
    assert len(written) == 12
    assert any("left out 1 row(s)" in note and "pyra@low" in note for note in notes)


# The built-in methods' recorded orders, and a plugin's.
METHODS = report.Methods(orders={"full_ft": 0, "lora": 1, "tome": 2, "pyra": 3, "diffrate": 4, "small_peft": 5,
                                 "mine": 9})


def test_methods_keep_their_style_in_every_plot():
    first = plots.method_styles(["lora", "zeta", "mine"], METHODS)
    second = plots.method_styles(["alpha", "zeta", "tome", "lora", "mine"], METHODS)
    assert all(first[name] == second[name] for name in first)
    assert len(set(plots.method_styles(METHODS.orders, METHODS).values())) == 7  # distinct orders, distinct styles
    assert plots.method_styles(["zeta"]) == plots.method_styles(["zeta"], METHODS)  # no order: by name alone


def _legend_styles(figure, methods) -> dict:
    """The legend's method entries: name -> (marker, colour)."""
    (legend,) = figure.legends
    return {text.get_text(): (handle.get_marker(), handle.get_color())
            for text, handle in zip(legend.get_texts(), legend.legend_handles) if text.get_text() in methods}


def test_a_methods_style_is_the_same_whatever_else_is_plotted():
    """Styles follow each method's recorded order (or name), not which other methods a plot happens to hold."""
    few = [("CPU A", "lora", "none", 70.0, 1000.0, 0.10), ("CPU A", "zeta", "none", 65.0, 900.0, 0.10),
           ("CPU A", "mine", "low", 66.0, 1500.0, 0.05)]
    more = few + [("CPU A", "alpha", "none", 60.0, 800.0, 0.10), ("CPU A", "tome", "high", 60.0, 1500.0, 0.03),
                  ("CPU A", "beta", "none", 61.0, 700.0, 0.10)]
    styles = [_legend_styles(plots.pareto_figure(_board(rows), "throughput", "t", METHODS), {row[1] for row in rows})
              for rows in (few, more)]
    assert list(styles[0]) == ["lora", "mine", "zeta"]  # the legend in display order
    assert all(styles[0][name] == styles[1][name] for name in styles[0])
    assert styles[1]["lora"] == ("o", "#1f77b4") and styles[1]["tome"] == ("^", "#ff7f0e")  # as before


def test_a_board_of_another_accuracy_than_the_default_names_it_in_the_titles(tmp_path, monkeypatch):
    titles = []
    make = plots.pareto_figure
    monkeypatch.setattr(plots, "pareto_figure", lambda board, metric, title, methods=None: (
        titles.append(title), make(board, metric, title, methods))[1])
    plots.write_pareto_plots(_board(ROWS), tmp_path / "best")
    plots.write_pareto_plots(_board(ROWS).assign(accuracy="at-best-val"), tmp_path / "val")
    where = "\nvit_micro_base_patch4_32 on CPU A"
    assert len(titles) == 6 and titles[0] == "offline suite: accuracy vs inference throughput" + where
    assert titles[3] == "offline suite: accuracy (at best val) vs inference throughput" + where
