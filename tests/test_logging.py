"""TensorBoard events, log-magnitude histograms, plots and the report, on small inputs with known content."""

from __future__ import annotations

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator as ea

from decay import histograms, metrics, plots, report
from decay.loop import train_run
from tests.conftest import tiny_config
from tests.shell import scratch, shell


def _events(log_dir):
    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0})
    acc.Reload()
    return acc


def test_tensorboard_events_hold_per_layer_scalars_and_histograms(tmp_path, tiny_data):
    cfg = tiny_config(depth=3, width=8, steps=8, eval_every=4, log_every=2, histograms=True)
    row = train_run(cfg, tiny_data, log_dir=str(tmp_path / "tb"))
    acc = _events(tmp_path / "tb")
    scalars = set(acc.Tags()["scalars"])
    for prefix in ("grad_norm", "signal_norm", "act_rms", "update_ratio", "grad_nan", "grad_inf", "grad_zero"):
        assert {f"{prefix}/layer_{l:02d}" for l in range(3)} <= scalars
    assert {"loss", "test_accuracy", "test_loss"} <= scalars
    # Logged every log_every steps, plus the last step; values are the train step's own.
    assert [e.step for e in acc.Scalars("grad_norm/layer_00")] == [0, 2, 4, 6, 7]
    for l in range(3):
        assert acc.Scalars(f"grad_norm/layer_{l:02d}")[0].value == pytest.approx(row["grad_norms_init"][l], rel=1e-6)
        assert acc.Scalars(f"signal_norm/layer_{l:02d}")[0].value == pytest.approx(row["signal_norms_init"][l], rel=1e-6)
    assert [e.step for e in acc.Scalars("test_accuracy")] == [0, 4, 8]
    assert acc.Scalars("test_accuracy")[-1].value == pytest.approx(row["test_accuracy"], rel=1e-6)
    losses = [e.value for e in acc.Scalars("loss")]
    assert losses == pytest.approx([v for _, v in row["loss_history"]], rel=1e-6)
    # Histograms: every kernel entry counted once (8x8 input -> 64 x 8 stem, 8 x 8 blocks).
    hist_tags = set(acc.Tags()["histograms"])
    assert {f"grad_log10_hist/layer_{l:02d}" for l in range(3)} <= hist_tags
    counted = acc.Histograms("grad_log10_hist/layer_00")[0].histogram_value.num
    assert counted + acc.Scalars("grad_zero/layer_00")[0].value == 64 * 8
    assert acc.Histograms("grad_log10_hist/layer_02")[0].histogram_value.num == 8 * 8


def test_layer_tags_widen_for_deep_nets():
    from decay.tensorboard_writer import layer_tag

    assert layer_tag("grad_norm", 3, 64) == "grad_norm/layer_03"
    assert layer_tag("grad_norm", 3, 1024) == "grad_norm/layer_0003"


def test_log_histogram_bins_any_magnitude_and_counts_specials_apart():
    values = np.array([1e-30, 3e-30, 1e-3, 0.5, 2.0, 1e30, -1e30, 0.0, 0.0, np.nan, np.inf, -np.inf, 2e-38], np.float32)
    h = {k: np.asarray(v) for k, v in histograms.log_histogram(jnp.asarray(values)).items()}
    assert h["zero"] == 2 and h["nan"] == 1 and h["inf"] == 2
    assert h["counts"].sum() == 8  # every finite non-zero value, down to float32's smallest normal
    for v in (1e-30, 1e-3, 0.5, 2.0, 1e30, 2e-38):
        lg = math.log10(float(np.float32(v)))
        i = int(np.searchsorted(histograms.EDGES, lg, side="right") - 1)
        assert h["counts"][i] >= 1, f"{v} not in bin {i}"
    i30 = int(np.searchsorted(histograms.EDGES, 30.0, side="right") - 1)
    assert h["counts"][i30] == 2  # +1e30 and -1e30: magnitudes


def _row(depth, seed, activation="tanh", norm="none", signal=None, diverged=False, acc=0.9):
    signal = signal if signal is not None else [0.5 ** (depth - l) for l in range(depth)]
    return {
        "name": f"r{depth}{activation}{norm}{seed}",
        "model": "mlp",
        "dataset": "digits",
        "depth": depth,
        "width": 8,
        "activation": activation,
        "norm": norm,
        "init": "lecun_normal",
        "weight_var": None,
        "bias_var": None,
        "residual": False,
        "residual_scale": 1.0,
        "optimizer": "sgd",
        "learning_rate": 0.1,
        "batch_size": 8,
        "steps": 20,
        "seed": seed,
        "final_loss": 1.0,
        "test_loss": 1.0,
        "test_accuracy": acc,
        "val_loss": None if diverged else 1.0,
        "val_accuracy": acc,
        "train_loss_end": None if acc is None else (1 - acc) * math.log(10),
        "trainability": metrics.trainability(None if acc is None else (1 - acc) * math.log(10), 10, diverged),
        "diverged": diverged,
        "diverged_at_step": 7 if diverged else None,
        "chi": 0.25,
        "verdict": "vanishing",
        "num_classes": 10,
        "grad_norms_init": signal,
        "signal_norms_init": signal,
        "act_rms_init": [1.0] * depth,
        "grad_norms_final": signal,
        "signal_norms_final": signal,
        "loss_history": [[0, 2.3], [5, 1.5], [7, float("nan")]] if diverged else [[0, 2.3], [10, 1.0], [19, 0.5]],
    }


def _awkward_rows():
    """Two configs, two depths, two seeds; a diverged run; NaN, Inf, zero, 1e-30 and 1e30 values."""
    rows = [_row(d, s, norm=n) for d in (2, 6) for s in (0, 1) for n in ("none", "batchnorm")]
    rows[1]["signal_norms_init"] = [float("nan"), 1e-30]
    rows[5]["signal_norms_init"] = [0.0, 1e-30, 1e-10, 1.0, 1e10, 1e30]
    rows[6]["grad_norms_init"] = [float("inf"), 1.0, 1.0, 1.0, 1.0, 1.0]
    rows[7] = _row(6, 1, norm="batchnorm", diverged=True, acc=None)
    rows[7]["chi"] = None
    return rows


@pytest.fixture
def awkward_rows():
    return _awkward_rows()


def _report_workdir():
    workdir = scratch("report_rows", make=True)
    with open(workdir / "results.jsonl", "w") as f:
        for r in _awkward_rows():
            f.write(json.dumps(r) + "\n")  # Python's json writes NaN/Infinity tokens; the reader copes
    return workdir


_REPORT = shell("experiments.report", f"--workdir={_report_workdir()}")


def test_plots_survive_nan_inf_zero_and_huge_ranges(tmp_path, awkward_rows):
    figs = plots.all_figures(awkward_rows, str(tmp_path))
    assert [os.path.basename(p) for p in figs["gradient_flow"]] == ["gradient_flow_tanh.png"]
    for paths in figs.values():
        for p in paths:
            with open(p, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
            assert os.path.getsize(p) > 10_000


def test_safe_log10_separates_what_a_log_axis_cannot_show():
    lg, masks = plots.safe_log10([1e-30, 0.0, None, float("inf"), 1e30, float("nan")])
    assert lg[0] == pytest.approx(-30) and lg[4] == pytest.approx(30)
    assert np.isnan(lg[[1, 2, 3, 5]]).all()
    assert masks["zero"].tolist() == [False, True, False, False, False, False]
    assert masks["posinf"].tolist() == [False, False, False, True, False, False]
    assert masks["nan"].tolist() == [False, False, True, False, False, True]


def test_report_from_results_alone():
    out = _REPORT()  # on the awkward rows, written to results.jsonl when this module was imported
    assert out.returncode == 0, out.stderr
    tmp_path = scratch("report_rows")
    text = (tmp_path / "report.md").read_text()
    assert "| depth | activation | norm |" in text
    assert "**tanh without normalization**" in text and "**tanh with batchnorm**" in text
    assert "diverged at the chosen rate: 1/2 at depth 6" in text
    assert "at depth 6 the backprop signal shrinks x0.50 per layer toward the input (vanishing)" in text
    assert "**Swept:** depths 2, 6; activations tanh; norms batchnorm, none; learning rates 0.1; 2 seeds." in text
    for line in text.splitlines():
        if line.startswith("!["):
            assert (tmp_path / line.split("(")[1].rstrip(")")).is_file()


_REPORT_EMPTY = shell("experiments.report", f"--workdir={scratch('report_empty', make=True)}")
_REPORT_NO_WORKDIR = shell("experiments.report")


def test_report_command_without_results_is_one_line():
    out = _REPORT_EMPTY()
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "has no results.jsonl" in out.stderr


def test_config_sentence_names_the_failure_and_the_quantity():
    rows = [_row(2, 0, acc=0.95), _row(32, 0, acc=0.1, signal=[1e-8] + [1.0] * 31)]
    rows[1]["chi"] = 0.5776  # 0.76^2
    rows[1]["grad_norms_init"] = [1e-6] + [1.0] * 31
    line = report.config_sentence(metrics.summarize(rows))
    assert "at depth 32 the backprop signal shrinks x0.76 per layer toward the input (vanishing)" in line
    assert "the backprop signal ||dL/dh|| reaching the first layer is 1.0e-08 of the last layer's" in line
    assert "the kernel gradient ||dL/dW|| (what the optimizer sees) first/last is 1.0e-06" in line
    assert "depth 2: trains, test 95.0%; depth 32: fails, test 10.0%" in line


def test_report_command_requires_workdir():
    out = _REPORT_NO_WORKDIR()
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "--workdir is required" in out.stderr


def test_report_names_what_was_swept_not_the_base_run(tmp_path):
    # A gelu/swish sweep at depth 32: the base RunConfig's own activation (tanh) and depth (8) must not appear.
    rows = []
    for act in ("gelu", "swish"):
        for seed in (0, 1):
            r = _row(32, seed, activation=act)
            r["name"] = f"mlp-d0032-{act}-none-lr0.1-s{seed}"
            rows.append(r)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"activation": "tanh", "depth": 8, "norm": "none", "learning_rate": 0.1, "seed": 0, "width": 8}
    config = {"base": base, "depths": [32], "activations": ["gelu", "swish"], "norms": ["none"], "seeds": 2}
    (tmp_path / "config.json").write_text(json.dumps({**config, "command": "python -m experiments.depth_sweep"}))
    text = open(report.write_report(str(tmp_path))).read()
    assert "**Swept:** depths 32; activations gelu, swish; norms none; learning rates 0.1; 2 seeds." in text
    assert "tanh" not in text and '"depth": 8' not in text and "width=8" in text


def _instrumented(depth, seed, activation="gelu", norm="none"):
    r = _row(depth, seed, activation=activation, norm=norm)
    r.update(
        q_init=[1.0] * depth, q_final=[2.0] * depth, q_star_theory=0.0 if norm == "none" else None,
        distance_init=[0.0] * depth, distance_final=[0.05] * depth, signal_profile_theory=[1.0] * depth,
    )  # fmt: skip
    return r


def _legend_labels(fig):
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


_GRIDS = [
    ((8,), (0,), ("gelu",), ("none",)),  # one depth, one seed, one activation, one norm
    ((8,), (0,), ("gelu",), ("none", "layernorm")),
    ((2, 8), (0, 1), ("gelu", "swish"), ("none", "layernorm")),
]


@pytest.mark.parametrize("depths, seeds, acts, norms", _GRIDS)
def test_figures_of_degenerate_grids_show_what_their_legends_say(depths, seeds, acts, norms):
    import matplotlib.pyplot as plt

    rows = [_instrumented(d, s, a, n) for d in depths for s in seeds for a in acts for n in norms]
    fig = plots.gradient_flow_figure([r for r in rows if r["activation"] == "gelu"], "gelu")
    assert len(fig.axes) - 1 * (len(depths) > 1) == (3 if len(depths) > 1 else 2) * len(norms)  # no heatmap row for one depth
    labels = _legend_labels(fig)
    assert [f"depth {d}" for d in depths] == labels[: len(depths)] and "0 (underflow)" not in labels  # nothing underflowed
    plt.close(fig)
    fig = plots.trainability(rows)
    labels = _legend_labels(fig)
    assert labels == [f"{a}, {'no norm' if n == 'none' else n}" for a in acts for n in norms] + ["chance (10%)"]
    markers = {line.get_label(): line.get_marker() for line in fig.axes[1].get_lines()}
    assert markers.get("gelu, no norm") == "o" and (len(norms) == 1 or markers["gelu, layernorm"] == "^")
    plt.close(fig)
    fig = plots.training_curves(rows)  # nothing diverged: no "diverged here" entry
    assert _legend_labels(fig) == [f"depth {d}" for d in depths]
    plt.close(fig)
    fig = plots.instrument_profiles(rows, "distance")  # 0 at initialization: said under the title, not in the legend
    assert _legend_labels(fig) == ["end of training"] and "initialization: 0 in every layer, not drawn" in fig.axes[0].get_title()
    plt.close(fig)
    fig = plots.instrument_profiles(rows, "q")  # theory q* = 0 without a norm: not drawable on the log axis
    assert "theory" not in _legend_labels(fig) and "theory q* = 0, not drawn" in fig.axes[0].get_title()
    plt.close(fig)
