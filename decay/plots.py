"""Figures of a sweep, from `results.jsonl` rows (the only module that imports matplotlib).

Every quantity that spans orders of magnitude is drawn as log10 on a linear axis, so that
values from 1e-30 to 1e30 share one axis; zeros (underflow), NaNs and Infs cannot be drawn
there and appear as markers on the panel's bottom edge (zero), top edge (+Inf) or as red
crosses (NaN) instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib import transforms  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

NORM_STYLES = {"none": "-", "batchnorm": "--", "layernorm": ":", "rmsnorm": "-."}
ACT_COLORS = plt.get_cmap("tab10")
NORM_MARKERS = {"none": "o", "batchnorm": "s", "layernorm": "^", "rmsnorm": "D"}

if TYPE_CHECKING:
    from decay.row import Row  # one results.jsonl line


def as_float_array(values: Sequence[Any] | None) -> np.ndarray:
    """A float64 array from JSON values: None becomes NaN."""
    if values is None:
        return np.array([], np.float64)
    return np.array([np.nan if v is None else float(v) for v in values], np.float64)


def safe_log10(values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """log10 of the positive finite values (NaN elsewhere) and boolean masks of the rest."""
    v = as_float_array(values) if not isinstance(values, np.ndarray) else values.astype(np.float64)
    ok = np.isfinite(v) & (v > 0)
    out = np.full(v.shape, np.nan)
    out[ok] = np.log10(v[ok])
    masks = {"zero": v == 0, "nan": np.isnan(v), "posinf": v == np.inf, "neg": np.isfinite(v) & (v < 0) | (v == -np.inf)}
    return out, masks


def mark_special(ax, x: np.ndarray, masks: dict[str, np.ndarray], color: Any) -> None:
    """Draws zeros / +Inf / NaN of a series as markers on the panel's edges (axes coordinates in y)."""
    trans = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    bad = masks["nan"] | masks["neg"]
    for mask, y, marker, c in ((masks["zero"], 0.02, "v", color), (masks["posinf"], 0.98, "^", color), (bad, 0.5, "x", "red")):
        if mask.any():
            ax.scatter(x[mask], np.full(mask.sum(), y), marker=marker, color=c, transform=trans, zorder=5, clip_on=False)


def _config_key(r: Row) -> tuple[str, bool]:
    return r["norm"], bool(r.get("residual"))


def _config_label(norm: str, residual: bool) -> str:
    name = "no norm" if norm == "none" else norm
    return name + (" + residual" if residual else "")


def _depth_colors(depths: Sequence[int]) -> dict[int, Any]:
    cmap = plt.get_cmap("viridis")
    n = max(len(depths) - 1, 1)
    return {d: cmap(0.9 * i / n) for i, d in enumerate(sorted(depths))}


def _seed_profiles(rows: Sequence[Row], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Median, min and max over seeds of log10 per-layer values, and masks of the median's specials."""
    logs, raw = [], []
    for r in rows:
        lg, _ = safe_log10(r.get(key))
        logs.append(lg)
        raw.append(as_float_array(r.get(key)))
    logs_a = np.vstack(logs)
    raw_a = np.vstack(raw)
    with np.errstate(all="ignore"), _quiet_nan():
        med = np.nanmedian(logs_a, axis=0)
        lo = np.nanmin(logs_a, axis=0)
        hi = np.nanmax(logs_a, axis=0)
    # A layer is special when no seed gives a drawable value: show the most common special.
    specials = {
        "zero": np.all(raw_a == 0, axis=0),
        "posinf": np.all(raw_a == np.inf, axis=0),
        "nan": np.all(np.isnan(logs_a), axis=0) & ~np.all(raw_a == 0, axis=0) & ~np.all(raw_a == np.inf, axis=0),
        "neg": np.zeros(raw_a.shape[1], bool),
    }
    return med, lo, hi, specials


def _quiet_nan() -> warnings.catch_warnings:
    """Silences numpy's all-NaN-slice warnings (they are expected here)."""
    return warnings.catch_warnings(action="ignore", category=RuntimeWarning)


def _group(rows: Sequence[Row], *keys: str) -> dict[tuple, list[Row]]:
    out: dict[tuple, list[Row]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return out


def _theory_overlay(ax, rows: Sequence[Row], measured_log: np.ndarray, color: Any) -> None:
    """Dashed predicted ||dL/dh_l||, scaled to the measured median at the last layer (where the gradient enters)."""
    profile = next((r.get("signal_profile_theory") for r in rows if r.get("signal_profile_theory")), None)
    if profile is None or not measured_log.size or not np.isfinite(measured_log[-1]):
        return
    lg, _ = safe_log10(as_float_array(profile))
    ax.plot(np.arange(len(lg)), lg + measured_log[-1], color=color, lw=1.2, ls=(0, (3, 2)), alpha=0.9)


def gradient_flow(rows: Sequence[Row], out_dir: str) -> list[str]:
    """`gradient_flow_figure` for every activation, saved as `<out_dir>/gradient_flow_<activation>.png`; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    activations = list(dict.fromkeys(r["activation"] for r in rows))
    return [
        save(
            gradient_flow_figure([r for r in rows if r["activation"] == act], act),
            os.path.join(out_dir, f"gradient_flow_{act}.png"),
        )
        for act in activations
    ]


def gradient_flow_figure(act_rows: Sequence[Row], act: str) -> Any:
    """The gradient-flow figure of one activation: per-layer signal and kernel-gradient norms at init, norms side by side.

    Rows of panels: log10 ||dL/dh_l|| against layer (one line per depth, median over seeds,
    band = min..max, dashed: the mean-field prediction where one exists); log10 ||dL/dW_l||;
    a layer x depth heatmap of the median signal norm.
    Panels of a row share their y (or colour) scale.
    """
    configs = list(dict.fromkeys(_config_key(r) for r in act_rows))
    depths = sorted({r["depth"] for r in act_rows})
    colors = _depth_colors(depths)
    ncol = len(configs)
    heatmap = len(depths) > 1  # with one depth the layer x depth heatmap repeats the top row: left out
    nrow = 3 if heatmap else 2
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(4.2 * ncol + 2.2, 11 if heatmap else 7.5), squeeze=False, sharey="row", layout="constrained"
    )
    heat, heat_zero = {}, {}
    seen = {"zero": False, "posinf": False, "nan": False}  # values a log axis cannot show, drawn on the edge
    for c, cfg in enumerate(configs):
        cfg_rows = [r for r in act_rows if _config_key(r) == cfg]
        for row_i, (key, ylabel) in enumerate(
            [
                ("signal_norms_init", "log10 ||dL/dh_l||  (backprop signal)"),
                ("grad_norms_init", "log10 ||dL/dW_l||  (kernel gradient)"),
            ]
        ):
            ax = axes[row_i, c]
            for d, d_rows in sorted(_group(cfg_rows, "depth").items()):
                depth = d[0]
                med, lo, hi, specials = _seed_profiles(d_rows, key)
                x = np.arange(len(med))
                ax.plot(x, med, color=colors[depth], lw=1.5, label=f"depth {depth}")
                ax.fill_between(x, lo, hi, color=colors[depth], alpha=0.2, lw=0)
                mark_special(ax, x, specials, colors[depth])
                drawn = {"zero": specials["zero"], "posinf": specials["posinf"], "nan": specials["nan"] | specials["neg"]}
                for k in seen:
                    seen[k] = seen[k] or bool(np.any(drawn[k]))
                if key == "signal_norms_init":
                    _theory_overlay(ax, d_rows, med, colors[depth])
                    heat[(c, depth)] = med
                    heat_zero[(c, depth)] = specials["zero"]
            ax.set_xlabel("layer l  (0 = input side)")
            if c == 0:
                ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if row_i == 0:
                ax.set_title(f"{act}, {_config_label(*cfg)}")
    handles = [Line2D([], [], color=colors[d], lw=2, label=f"depth {d}") for d in depths]
    if any(r.get("signal_profile_theory") for r in act_rows):
        label = "mean-field theory\n(anchored at last layer)"
        handles.append(Line2D([], [], color="black", lw=1.2, ls=(0, (3, 2)), label=label))
    specials_legend = {
        "zero": Line2D([], [], marker="v", ls="", color="gray", label="0 (underflow)"),
        "posinf": Line2D([], [], marker="^", ls="", color="gray", label="+Inf (overflow)"),
        "nan": Line2D([], [], marker="x", ls="", color="red", label="NaN"),
    }
    handles += [h for k, h in specials_legend.items() if seen[k]]  # only what this figure draws
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="lines: median over seeds\nband: seed min..max")
    fig.suptitle(f"Gradient flow at initialization — {act}:\nbackprop signal and gradient per layer", fontsize=12)
    if not heatmap:
        return fig
    finite = np.concatenate([v[np.isfinite(v)] for v in heat.values()] or [np.array([0.0])])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 1, vmax + 1
    image = None
    for c in range(ncol):
        ax = axes[2, c]
        grid = np.full((len(depths), max(depths)), np.nan)
        exists = np.zeros(grid.shape)
        underflow = np.zeros(grid.shape, bool)
        for i, depth in enumerate(depths):
            if (c, depth) in heat:
                grid[i, :depth] = heat[(c, depth)]
                exists[i, :depth] = 1.0
                underflow[i, :depth] = heat_zero[(c, depth)]
        extent = (-0.5, max(depths) - 0.5, -0.5, len(depths) - 0.5)
        # Layers that exist but have no drawable value show grey; zeros (underflow) show blue.
        ax.imshow(
            exists,
            aspect="auto",
            origin="lower",
            cmap=mcolors.ListedColormap(["white", "#bbbbbb"]),
            vmin=0,
            vmax=1,
            interpolation="nearest",
            extent=extent,
        )
        grid[underflow] = vmin - 1.0
        cmap = plt.get_cmap("magma").with_extremes(bad=(0, 0, 0, 0), under="#2b6cff")
        image = ax.imshow(
            grid,
            aspect="auto",
            origin="lower",
            cmap=cmap,
            norm=mcolors.Normalize(vmin, vmax),
            interpolation="nearest",
            extent=extent,
        )
        ax.set_yticks(range(len(depths)), [str(d) for d in depths])
        ax.set_xlabel("layer l  (0 = input side)")
        if c == 0:
            ax.set_ylabel("network depth")
        ax.set_title("median log10 ||dL/dh_l||, layer x depth", fontsize=9)
    cbar = fig.colorbar(image, ax=axes[2, :].tolist(), extend="min", shrink=0.9)
    cbar.set_label("log10 ||dL/dh_l||  (blue: 0, underflow; grey: NaN)")
    return fig


def trainability(rows: Sequence[Row]) -> Any:
    """chi and test accuracy against depth, one line per activation x norm; returns the figure."""
    fig, (ax_chi, ax_acc) = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    acts = list(dict.fromkeys(r["activation"] for r in rows))
    for (act, norm, residual), g in _group(rows, "activation", "norm", "residual").items():
        color = ACT_COLORS(acts.index(act) % 10)
        style = NORM_STYLES.get(norm, "-")
        marker = NORM_MARKERS.get(norm, "o")  # the norm shows in the marker too: a single depth draws no line
        label = f"{act}, {_config_label(norm, bool(residual))}"
        depths = sorted({r["depth"] for r in g})
        for ax, key, transform in ((ax_chi, "chi", safe_log10), (ax_acc, "test_accuracy", None)):
            med, lo, hi = [], [], []
            for d in depths:
                vals = as_float_array([r.get(key) for r in g if r["depth"] == d])
                if transform is not None:
                    vals = transform(vals)[0]
                with _quiet_nan():
                    med.append(np.nanmedian(vals) if vals.size else np.nan)
                    lo.append(np.nanmin(vals) if vals.size else np.nan)
                    hi.append(np.nanmax(vals) if vals.size else np.nan)
            ax.plot(depths, med, style, color=color, marker=marker, ms=5, mfc="none" if norm != "none" else color, label=label)
            ax.fill_between(depths, lo, hi, color=color, alpha=0.12, lw=0)
        div = [(r["depth"], r.get("test_accuracy")) for r in g if r.get("diverged")]
        if div:
            ax_acc.scatter([d for d, _ in div], [0.0 if a is None else a for _, a in div], marker="x", color="red", zorder=5)
    ax_chi.axhline(0.0, color="black", lw=0.8)
    ax_chi.set_ylabel("log10 chi  (per-layer factor of ||dL/dh||^2)")
    ax_chi.set_title("Backprop signal per layer at initialization\n(> 0 explodes toward the input, < 0 vanishes)")
    classes = rows[0].get("num_classes") or 10
    ax_acc.axhline(1.0 / classes, color="gray", lw=0.8, ls="--", label=f"chance ({100 / classes:.0f}%)")
    ax_acc.set_ylabel("test accuracy (fraction)")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_title("Test accuracy after training, at the learning rate\nchosen on validation (red x: a seed diverged)")
    all_depths = sorted({r["depth"] for r in rows})
    for ax in (ax_chi, ax_acc):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_depths, [str(d) for d in all_depths])
        ax.minorticks_off()
        ax.set_xlabel("depth (hidden layers)")
        ax.grid(alpha=0.3)
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, ncol=min(len(labels), 5))
    fig.suptitle("Trainability: gradient factor and accuracy against depth (median over seeds, band = min..max)")
    return fig


def training_curves(rows: Sequence[Row]) -> Any:
    """Training loss against step, a panel per activation x norm, a line per depth and seed; returns the figure."""
    acts = list(dict.fromkeys(r["activation"] for r in rows))
    configs = list(dict.fromkeys(_config_key(r) for r in rows))
    depths = sorted({r["depth"] for r in rows})
    colors = _depth_colors(depths)
    fig, axes = plt.subplots(
        len(acts), len(configs), figsize=(4 * len(configs) + 1, 3 * len(acts) + 1), squeeze=False, sharex=True, sharey=True
    )
    for i, act in enumerate(acts):
        for j, cfg in enumerate(configs):
            ax = axes[i, j]
            for r in (r for r in rows if r["activation"] == act and _config_key(r) == cfg):
                hist = r.get("loss_history") or []
                if not hist:
                    continue
                steps = np.array([h[0] for h in hist], np.float64)
                lg, masks = safe_log10([h[1] for h in hist])
                ax.plot(steps, lg, color=colors[r["depth"]], lw=1, alpha=0.8)
                if r.get("diverged"):
                    finite = np.flatnonzero(np.isfinite(lg))
                    y = lg[finite[-1]] if finite.size else 0.0
                    ax.scatter([r["diverged_at_step"]], [y], marker="x", color="red", s=50, zorder=5)
                mark_special(ax, steps, masks, colors[r["depth"]])
            ax.set_title(f"{act}, {_config_label(*cfg)}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(acts) - 1:
                ax.set_xlabel("step")
            if j == 0:
                ax.set_ylabel("log10 training loss")
    handles = [Line2D([], [], color=colors[d], label=f"depth {d}") for d in depths]
    if any(r.get("diverged") for r in rows):  # the marker is in the legend only when a run diverged
        handles.append(Line2D([], [], marker="x", ls="", color="red", label="diverged here"))
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle("Training loss (one line per seed)")
    fig.tight_layout(rect=(0, 0, 0.92, 0.97))
    return fig


def _edges(centers: Sequence[float], log: bool = False) -> np.ndarray:
    """Cell edges around sorted centers (midpoints; geometric midpoints with log=True)."""
    c = np.log(np.asarray(centers, np.float64)) if log else np.asarray(centers, np.float64)
    if c.size == 1:
        e = np.array([c[0] - 0.5, c[0] + 0.5])
    else:
        mid = (c[1:] + c[:-1]) / 2
        e = np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])
    return np.exp(e) if log else e


def phase_diagram(doc: dict[str, Any]) -> Any:
    """Order-to-chaos phase diagram (left) and measured trainability against 6 xi_c (right); returns the figure."""
    fig, (ax_t, ax_a) = plt.subplots(1, 2, figsize=(14, 5.8), layout="constrained")
    th = doc["theory"]
    w, b = np.asarray(th["weight_vars"]), np.asarray(th["bias_vars"])
    chi = np.array([[np.nan if v is None else v for v in row] for row in th["chi_1"]], np.float64)
    lg = np.log10(chi)
    lim = float(np.nanmax(np.abs(lg[np.isfinite(lg)]))) if np.isfinite(lg).any() else 1.0
    mesh = ax_t.pcolormesh(w, b, lg, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="auto")
    ax_t.contour(w, b, chi, levels=[1.0], colors="black", linewidths=2)
    ax_t.axhline(doc["bias_var"], color="gray", ls="--", lw=1)
    ax_t.text(w[0] + 0.05 * (w[-1] - w[0]), b[-1] * 0.92, "ordered\n(chi_1 < 1: vanishing)", fontsize=10, va="top")
    x_right, y_low = w[-1] - 0.05 * (w[-1] - w[0]), b[0] + 0.08 * (b[-1] - b[0])
    ax_t.text(x_right, y_low, "chaotic\n(chi_1 > 1: exploding)", ha="right", fontsize=10)
    ax_t.set_xlabel("sigma_w^2 (weight_var)")
    ax_t.set_ylabel("sigma_b^2 (bias_var)")
    ax_t.set_title(
        f"{doc['activation']}: log10 chi_1 at the fixed point q*; black line chi_1 = 1 (critical)\n"
        f"dashed: bias_var {doc['bias_var']:g} of the trained nets (right)"
    )
    fig.colorbar(mesh, ax=ax_t, label="log10 chi_1")

    acc = doc["accuracy"]
    aw, ad = acc["weight_vars"], acc["depths"]
    grid = np.array([[np.nan if v is None else v for v in row] for row in acc["test_accuracy"]], np.float64)
    image = ax_a.pcolormesh(_edges(aw), _edges(ad, log=True), grid, cmap="viridis", vmin=0.0, vmax=1.0)
    for i, d in enumerate(ad):
        for j, wv in enumerate(aw):
            v = grid[i, j]
            ax_a.text(
                wv,
                d,
                "div" if np.isnan(v) else f"{100 * v:.0f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if np.isnan(v) or v < 0.6 else "black",
            )
    line = doc["xi_c"]
    lw = np.asarray(line["weight_vars"])
    xi = np.array([np.inf if v is None else v for v in line["xi_c"]], np.float64)
    ymax = _edges(ad, log=True)[-1]
    mult = doc["trainable_xi_multiple"]
    ax_a.plot(lw, np.minimum(mult * xi, ymax * 10), color="red", lw=2, label=f"{mult:g} xi_c (predicted trainable depth)")
    ax_a.plot(lw, np.minimum(xi, ymax * 10), color="red", lw=1, ls="--", label="xi_c")
    if doc.get("critical_weight_var"):
        ax_a.axvline(doc["critical_weight_var"], color="white", ls=":", lw=1.5, label="critical sigma_w^2 (chi_1 = 1)")
    ax_a.set_yscale("log", base=2)
    ax_a.set_yticks(ad, [str(d) for d in ad])
    ax_a.minorticks_off()
    ax_a.set_ylim(_edges(ad, log=True)[0], ymax)
    ax_a.set_xlabel("sigma_w^2 (weight_var)")
    ax_a.set_ylabel("depth (hidden layers)")
    ax_a.set_title(
        f"Measured: test accuracy (%) after training, median over seeds, sigma_b^2 = {doc['bias_var']:g}\n"
        f"(chance {100 * doc['chance']:.0f}%); red: theory"
    )
    ax_a.legend(loc="upper right", fontsize=8, framealpha=0.8)
    fig.colorbar(image, ax=ax_a, label="test accuracy")
    return fig


def claim_figure(title: str, spec: dict[str, Any]) -> Any:
    """The figure of one seed claim, by `spec["kind"]`; returns the figure.

    layers: log10 per-layer series against layer; bars: grouped bars (group -> {label: value}, optional
    "errors": group -> {label: (lo, hi)} drawn as error bars);
    curves: value against a categorical x per label; losses: log10 training loss per run.
    """
    fig, ax = plt.subplots(figsize=(9, 4.8), layout="constrained")
    kind = spec["kind"]
    if kind == "layers":
        for i, (label, values) in enumerate(spec["series"].items()):
            lg, masks = safe_log10(as_float_array(values))
            x = np.arange(len(lg))
            style = "--" if "||W" in label else "-"  # weights dashed beside gradients
            ax.plot(x, lg, style, marker="o", ms=2.5, color=ACT_COLORS(i % 10), label=label)
            mark_special(ax, x, masks, ACT_COLORS(i % 10))
        ax.set_xlabel("layer l  (0 = input side)")
        ax.set_ylabel(spec["ylabel"])
    elif kind == "bars":
        groups = spec["groups"]
        labels = list(dict.fromkeys(k for g in groups.values() for k in g))
        width = 0.8 / max(len(groups), 1)
        for i, (group, values) in enumerate(groups.items()):
            x = np.arange(len(labels)) + (i - (len(groups) - 1) / 2) * width
            heights = np.array([np.nan if values.get(k) is None else values[k] for k in labels], np.float64)
            errors = spec.get("errors", {}).get(group)  # label -> (lo, hi): drawn as error bars
            yerr = None
            if errors:
                lo = np.array([np.nan if errors.get(k, (None,))[0] is None else errors[k][0] for k in labels], np.float64)
                hi = np.array([np.nan if errors.get(k, (None, None))[1] is None else errors[k][1] for k in labels], np.float64)
                yerr = np.nan_to_num(np.stack([heights - lo, hi - heights]), nan=0.0).clip(min=0)
            ax.bar(x, heights, width, yerr=yerr, capsize=3, label=group, color=ACT_COLORS(i % 10))
        ax.set_xticks(np.arange(len(labels)), labels, rotation=15, ha="right", fontsize=8)
        ax.axhline(spec["chance"], color="gray", ls="--", lw=0.8, label="chance")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(spec["ylabel"])
    elif kind == "curves":
        for i, (label, points) in enumerate(spec["curves"].items()):
            xs = [int(k) for k in points]
            ax.plot(xs, list(points.values()), marker="o", color=ACT_COLORS(i % 10), label=label)
            extra = spec.get("points", {}).get(label)  # e.g. the residual net at one depth
            if extra:
                d, value, name = extra
                ax.scatter(
                    [d],
                    [value],
                    marker="*",
                    s=160,
                    color=ACT_COLORS(i % 10),
                    edgecolor="black",
                    zorder=5,
                    label=f"{label}, {name}",
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(spec.get("xlabel", ""))
        ax.set_ylabel(spec["ylabel"])
        ax.set_ylim(0, 1.02)
    elif kind == "losses":
        for i, (label, runs) in enumerate(spec["runs"].items()):
            for j, hist in enumerate(runs):
                steps = np.array([h[0] for h in hist], np.float64)
                lg, _ = safe_log10([h[1] for h in hist])
                ax.plot(steps, lg, color=ACT_COLORS(i % 10), lw=1, alpha=0.8, label=label if j == 0 else None)
        ax.set_xlabel("step")
        ax.set_ylabel("log10 training loss (one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def save(fig: Any, path: str) -> str:
    """Writes `fig` as PNG (a temporary file renamed when complete) and closes it; process 0 alone in a multi-process job.

    Raises `decay.errors.WriteError`, one line, when it cannot be written.
    """
    from decay import distributed
    from decay.results import replacing

    try:
        if distributed.is_writer():
            with replacing(path) as tmp:
                fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def doctor_profiles(doc: dict[str, Any]) -> Any:
    """The doctor's figure: ||dL/dh_l|| / ||dL/dh_{L-1}|| at initialization per layer, before and after each proposal
    (measured: median over seeds, solid; theory: dashed), log10 axis; the band is where the gain counts as fixed."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    d = doc["config"]["depth"]
    x = np.arange(d)
    ax.axhspan(-0.5, 0.5, color="0.9", zorder=0, label="first/last within 10^(+-1/2): squared gain in [1e-1, 1e1]")
    sides = [("original (as given)", doc["diagnosis"])] + [
        (f"{i}. {e['kind']}: {e['flags']}", e["measured"]) for i, e in enumerate(doc["proposals"], 1)
    ]
    for i, (label, m) in enumerate(sides):
        color = "black" if i == 0 else ACT_COLORS(i - 1)
        lg, masks = safe_log10(as_float_array(m["profile"]))
        ax.plot(x, lg, color=color, lw=2.2 if i == 0 else 1.6, label=label)
        mark_special(ax, x, masks, color)
        if m.get("profile_theory"):
            ax.plot(x, safe_log10(as_float_array(m["profile_theory"]))[0], color=color, ls="--", lw=1)
    ax.plot([], [], color="gray", ls="--", lw=1, label="theory (mean field)")
    ax.set_xlabel("hidden layer l (0 = nearest the input)")
    ax.set_ylabel("log10 ||dL/dh_l|| / ||dL/dh_L-1||")
    c = doc["config"]
    ax.set_title(f"Doctor: {c['activation']}, norm {c['norm']}, depth {d}: backprop signal at initialization")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def all_figures(rows: Sequence[Row], out_dir: str) -> dict[str, list[str]]:
    """Every figure of a sweep into `out_dir`; returns {kind: [paths]}."""
    if not rows:
        return {}
    return {
        "gradient_flow": gradient_flow(rows, out_dir),
        "trainability": [save(trainability(rows), os.path.join(out_dir, "trainability.png"))],
        "training_curves": [save(training_curves(rows), os.path.join(out_dir, "training_curves.png"))],
        "instruments": instrument_figures(rows, out_dir),
    }


def layer_comparison(stats: dict[str, Sequence[Any]], stats0: dict[str, Sequence[Any]], step: int, title: str) -> Any:
    """Per-layer norms at `step` against step 0 (initialization), one panel per quantity; returns the figure."""
    keys = [
        ("grad_norms", "log10 ||dL/dW_l||"),
        ("signal_norms", "log10 ||dL/dh_l||"),
        ("act_rms", "log10 RMS of activation"),
        ("weight_norms", "log10 ||W_l||"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), layout="constrained")
    for ax, (key, label) in zip(axes, keys, strict=True):
        series = [(stats0.get(key), "step 0 (init)", "gray")]
        if step != 0:  # at step 0 the two series are one
            series.append((stats.get(key), f"step {step}", "C0"))
        for values, name, color in series:
            lg, masks = safe_log10(as_float_array(values))
            x = np.arange(len(lg))
            ax.plot(x, lg, marker="o", ms=3, color=color, label=name)
            mark_special(ax, x, masks, color)
        per_point = key in ("signal_norms", "act_rms")  # a recurrent net's points are its time steps
        ax.set_xlabel("probe point: layer l, or time step t  (0 = input side)" if per_point else "layer l  (0 = input side)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return fig


def jacobian_spectrum(spectra: dict[str, Sequence[Sequence[float]]], title: str) -> Any:
    """Histogram of log10 singular values of the input-output Jacobian, one series per label; returns the figure."""
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    all_logs = {}
    for label, sv in spectra.items():
        lg, _ = safe_log10(np.asarray(sv, np.float64).ravel())
        all_logs[label] = lg[np.isfinite(lg)]
    finite = np.concatenate([v for v in all_logs.values() if v.size] or [np.array([0.0])])
    lo, hi = float(finite.min()), float(finite.max())
    bins = np.linspace(lo - 0.1, hi + 0.1, 40)
    for i, (label, lg) in enumerate(all_logs.items()):
        ax.hist(lg, bins=bins, alpha=0.5, color=f"C{i}", label=f"{label} ({lg.size} values)")
    ax.axvline(0.0, color="black", lw=0.8, ls="--", label="1 (isometry)")
    ax.set_xlabel("log10 singular value of J = d h_{L-1} / d x")
    ax.set_ylabel("count (all examples pooled)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _instrument_key(r: Row) -> tuple:
    return (r["activation"], r["norm"], r.get("residual_scale") if r.get("residual") else None)


def _instrument_label(key: tuple) -> str:
    act, norm, res = key
    return f"{act}, {norm}" + (f", residual {res:g}" if res is not None else "")


INSTRUMENT_PLOTS = {  # row key prefix -> (y label, log scale)
    "q": ("q_l = mean h_l^2 (dotted grey: theory q*)", True),
    "c": ("c_l = mean cos(h_l[i], h_l[j]) (dotted grey: theory c*)", False),
    "dead_fraction": ("fraction of dead units", False),
    "distance": ("||W_l - W_l(0)|| / ||W_l(0)||", True),
    "per_sample_grad_norm": ("mean per-sample ||g_i||", True),
    "grad_snr": ("gradient SNR ||G||^2 / tr Sigma", True),
    "b_simple_layers": ("B_simple = tr Sigma / ||G||^2", True),
    "hessian_trace_layers": ("Hutchinson tr of the layer's Hessian block", False),
}


def instrument_profiles(rows: Sequence[Row], key: str) -> Any:
    """One instrument per layer at the sweep's largest depth: a panel per config, init solid, end dashed, median over seeds."""
    ylabel, log = INSTRUMENT_PLOTS[key]
    rows = [r for r in rows if r.get(f"{key}_init") is not None or r.get(f"{key}_final") is not None]
    depth = max(r["depth"] for r in rows)
    rows = [r for r in rows if r["depth"] == depth]
    configs = list(dict.fromkeys(_instrument_key(r) for r in rows))
    acts = list(dict.fromkeys(c[0] for c in configs))
    others = list(dict.fromkeys(c[1:] for c in configs))
    fig, axes = plt.subplots(
        len(acts),
        len(others),
        figsize=(3.6 * len(others) + 1, 3.0 * len(acts) + 0.6),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax in axes.ravel():
        ax.set_visible(False)
    for cfg in configs:
        ax = axes[acts.index(cfg[0]), others.index(cfg[1:])]
        ax.set_visible(True)
        cfg_rows = [r for r in rows if _instrument_key(r) == cfg]
        notes: list[str] = []  # what a log axis cannot show, said under the panel title
        for suffix, style, label in (("init", "-", "initialization"), ("final", "--", "end of training")):
            values = [as_float_array(r.get(f"{key}_{suffix}")) for r in cfg_rows if r.get(f"{key}_{suffix}") is not None]
            if not values:
                continue
            stacked = np.stack(values)
            med = np.nanmedian(stacked, axis=0) if np.isfinite(stacked).any() else stacked[0]
            if log and not np.any(np.isfinite(med) & (med > 0)):  # e.g. distance 0 at initialization: said, not drawn
                notes.append(f"{label}: 0 in every layer, not drawn")
                continue
            ax.plot(np.arange(len(med)), med, style, marker="o", ms=2.5, color="C0" if suffix == "init" else "C3", label=label)
        star = {"q": "q_star_theory", "c": "c_star_theory"}.get(key)
        if star and cfg_rows[0].get(star) is not None:
            value = cfg_rows[0][star]
            if log and value <= 0:  # a log axis cannot draw it: said under the title instead
                notes.append(f"theory {star[0]}* = {value:g}, not drawn")
            else:
                ax.axhline(value, color="gray", ls=":", lw=1.2, label="theory")
        if log:
            drawn = [v for line in ax.get_lines() for v in np.asarray(line.get_ydata(), np.float64).ravel()]
            if any(np.isfinite(v) and v > 0 for v in drawn):
                ax.set_yscale("log")
            else:  # nothing positive to draw (e.g. distance 0 at initialization only): a log axis would be empty
                notes.append("all values 0")
        ax.set_title(_instrument_label(cfg) + "".join(f"\n({n})" for n in notes), fontsize=9 if not notes else 8)
        ax.set_xlabel("layer l  (0 = input side)")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel(ylabel, fontsize=8)
    handles = {}
    for ax in axes.ravel():  # every entry any panel draws, once
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(f"{ylabel} at depth {depth}, median over seeds")
    return fig


def edge_of_stability(rows: Sequence[Row]) -> Any:
    """Top Hessian eigenvalue at initialization and at the end against depth, with 2 / learning rate; diverged runs marked."""
    rows = [r for r in rows if r.get("hessian_top_init") is not None or r.get("hessian_top_final") is not None]
    configs = list(dict.fromkeys(_instrument_key(r) for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True, layout="constrained")
    for ax, suffix in zip(axes, ("init", "final"), strict=True):
        for i, cfg in enumerate(configs):
            cfg_rows = [r for r in rows if _instrument_key(r) == cfg and r.get(f"hessian_top_{suffix}") is not None]
            if not cfg_rows:
                continue
            x = [r["depth"] * (1 + 0.04 * (i - len(configs) / 2)) for r in cfg_rows]
            y = [max(r[f"hessian_top_{suffix}"], 1e-6) for r in cfg_rows]
            marker = ["x" if r["diverged"] else "o" for r in cfg_rows]
            for xx, yy, m in zip(x, y, marker, strict=True):
                ax.scatter(xx, yy, color=f"C{i % 10}", marker=m, s=28 if m == "o" else 60)
            ax.plot([], [], "o", color=f"C{i % 10}", label=_instrument_label(cfg))
        eos = next((r.get("edge_of_stability") for r in rows if r.get("edge_of_stability")), None)
        if eos:
            ax.axhline(eos, color="black", ls="--", lw=1, label=f"edge of stability = {eos:g}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth")
        ax.set_title("at initialization" if suffix == "init" else "at the end (x: diverged; its last measurement before)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top Hessian eigenvalue (power iteration)")
    axes[1].legend(fontsize=7, loc="best")
    return fig


def instrument_figures(rows: Sequence[Row], out_dir: str) -> list[str]:
    """A figure per instrument present in the rows."""
    paths = []
    for key in INSTRUMENT_PLOTS:
        if any(r.get(f"{key}_init") is not None or r.get(f"{key}_final") is not None for r in rows):
            if (
                all(not np.isfinite(as_float_array(r.get(f"{key}_init") or [np.nan])).any() for r in rows)
                and key == "dead_fraction"
            ):
                continue  # no ReLU-like activation in the sweep
            paths.append(save(instrument_profiles(rows, key), os.path.join(out_dir, f"instrument_{key}.png")))
    if any(r.get("hessian_top_final") is not None for r in rows):
        paths.append(save(edge_of_stability(rows), os.path.join(out_dir, "instrument_hessian_top.png")))
    return paths


def _by_kind(names: Sequence[str]) -> tuple[dict[str, list[int]], int]:
    """Entries grouped by kind (decay.watcher.pattern), and the longest kind's length."""
    from decay.watcher import pattern

    kinds: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        kinds.setdefault(pattern(n), []).append(i)
    return kinds, max((len(v) for v in kinds.values()), default=1)


def _kind_panel(ax, names: Sequence[str], series: dict[str, Sequence[Any]], ylabel: str, only_matrices: bool) -> None:
    """One line per kind of entry across its layers; single entries as markers at the input (left) or output (right)."""
    kinds, n = _by_kind(names)
    if only_matrices:
        kept = {k: v for k, v in kinds.items() if k.replace("[*]", "").endswith(("kernel", "embedding"))}
        kinds = kept or kinds
        n = max((len(v) for v in kinds.values()), default=1)
    stacked = [i for v in kinds.values() if len(v) > 1 for i in v]
    first = min(stacked, default=0)
    styles = {"init": "-", "final": "--"}
    for c, (kind, members) in enumerate(kinds.items()):
        color = ACT_COLORS(c % 10)
        for k, (when, values) in enumerate(series.items()):
            y, specials = safe_log10([values[i] if i < len(values) else None for i in members])
            if len(members) > 1:
                x = np.arange(len(members))
            else:
                x = np.array([-1.0 if members[0] < first else float(n)])
            ax.plot(x, y, ls=styles[when], marker="o", ms=3, lw=1.2, color=color, label=kind if k == 0 else None)
            mark_special(ax, x, specials, color)
    ax.set_xlabel("layer within the kind  (single entries: left of 0 = input side, right = output side)", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=1 + len(kinds) // 8)


def watch_figure(row: Row) -> Any:
    """The gradient-flow figure of a watched model: per kind of probe point, log10 ||dL/dh|| and RMS(h) across its
    layers at the first (solid) and last (dashed) recorded step; per kind of weight matrix log10 ||dL/dW|| and the
    last update ratio."""
    points, params = row["points"], row["params"]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9), layout="constrained")
    both = lambda key: {w: row.get(f"{key}_{w}") or [] for w in ("init", "final")}  # noqa: E731
    _kind_panel(axes[0, 0], points, both("signal_norms"), "log10 ||dL/dh||  (backprop signal at the probe points)", False)
    _kind_panel(axes[1, 0], points, both("act_rms"), "log10 RMS(h)  (forward signal at the probe points)", False)
    _kind_panel(axes[0, 1], params, both("grad_norms"), "log10 ||dL/dW||  (weight matrices)", True)
    _kind_panel(
        axes[1, 1], params, {"final": row.get("update_ratio_final") or []}, "log10 ||delta W|| / ||W||  (last update)", True
    )
    chi = row.get("chi")
    chi_text = "n/a" if chi is None else f"{chi:.3g}"
    fig.suptitle(
        f"Gradient flow of {row['model'].split('.')[-1]} ({row['name']}): {row['verdict']}, chi {chi_text} per point "
        f"along {row.get('chi_along', 'the points')}\nsolid: first recorded step, dashed: last finite step "
        f"({row['steps']} recorded steps)",
        fontsize=11,
    )
    return fig


# ---------------------------------------------------------------------------------------------
# The time sweep (decay.studies.time_sweep): recurrent nets along time


def time_gradient_figure(summary: Sequence[dict[str, Any]], variants: Sequence[str]) -> Any:
    """log10 ||dL/dh_t|| at initialization against t, one panel per variant, one line per sequence length; the
    LSTM's cell path dashed, mean-field theory (scaled to the measured last step) dotted."""
    n = len(variants)
    cols = min(4, n)
    rows_n = -(-n // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.0 * rows_n), squeeze=False, sharey=True)
    lengths = sorted({s["seq_len"] for s in summary})
    cmap = plt.get_cmap("viridis")
    color = {t: cmap(i / max(1, len(lengths) - 1) * 0.85) for i, t in enumerate(lengths)}
    for ax, v in zip(axes.flat, variants, strict=False):
        for s in (s for s in summary if s["variant"] == v):
            t = s["seq_len"]
            logs, masks = safe_log10(s["signal_init"])
            steps = np.arange(len(logs))
            ax.plot(steps, logs, "-", color=color[t], lw=1.6, label=f"T={t}")
            mark_special(ax, steps, masks, color[t])
            if s.get("cell_signal_init"):
                cl, _ = safe_log10(s["cell_signal_init"])
                ax.plot(np.arange(len(cl)), cl, "--", color=color[t], lw=1.2)
            if s.get("signal_theory") and np.isfinite(logs[-1]):
                th, _ = safe_log10(s["signal_theory"])
                ax.plot(np.arange(len(th)), th - th[-1] + logs[-1], ":", color="black", lw=1.0)
        ax.set_title(v, fontsize=10)
        ax.set_xlabel("time step t (the loss reads h at t = T - 1)")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("log10 ||dL/dh_t|| at init")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [Line2D([], [], color=color[t], label=f"T = {t}") for t in lengths]
    handles += [
        Line2D([], [], color="gray", ls="--", label="lstm cell ||dL/dc_t||"),
        Line2D([], [], color="black", ls=":", label="mean-field theory"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Backprop signal along time at initialization (loss read at the last step)", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def time_score_figure(summary: Sequence[dict[str, Any]], variants: Sequence[str], solved: float, baseline: float) -> Any:
    """Test MSE at the validation-chosen rate against T per variant: the mean over seeds (line) and every seed (dots)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for i, v in enumerate(variants):
        mine = sorted((s for s in summary if s["variant"] == v), key=lambda s: s["seq_len"])
        if not mine:
            continue
        shift = 1.0 + 0.03 * (i - len(variants) / 2)  # spreads the variants' markers around each T
        t = np.array([s["seq_len"] for s in mine], float) * shift
        mean = np.array([np.nan if s["test_mse"]["mean"] is None else s["test_mse"]["mean"] for s in mine])
        ax.plot(t, mean, "-o", ms=5, color=ACT_COLORS(i), label=v)
        for s in mine:  # every seed at the chosen rate, so that the spread is seen as it is
            seeds = as_float_array(s["test_mse_values"])
            ax.plot(np.full(seeds.shape, s["seq_len"] * shift), seeds, ".", ms=4, alpha=0.5, color=ACT_COLORS(i))
    ax.axhline(baseline, color="gray", ls="--", lw=1)
    ax.text(ax.get_xlim()[0] if False else 1.0, baseline, " predict 1 (MSE 1/6)", va="bottom", fontsize=8, color="gray",
            transform=transforms.blended_transform_factory(ax.transAxes, ax.transData), ha="right")  # fmt: skip
    ax.axhline(solved, color="green", ls=":", lw=1)
    ax.text(1.0, solved, f" solved (< {solved:g})", va="bottom", ha="right", fontsize=8, color="green",
            transform=transforms.blended_transform_factory(ax.transAxes, ax.transData))  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("test MSE (adding problem)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Task score against sequence length (lr chosen on validation)", fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# The transformer sweep (decay.studies.transformer_sweep)


def transformer_init_figure(summary: Sequence[dict[str, Any]], blocks: Sequence[str]) -> Any:
    """At initialization, per block index at the deepest depth, one line per block type: the kernel gradient norm
    (geometric mean of the block's 6 kernels), the backprop signal along the residual stream, the stream's q beside
    the residual theory's band, and c_tokens. What a panel cannot show is named in it instead: a block type whose
    values are all zero or non-finite (rezero's kernel gradients are 0 at init; no_norm and no_skip overflow), q far
    above the normed blocks' (drawn on its own scale it would flatten them), c_tokens once q passes 1e30 (float32
    cosines of overflowing vectors are noise)."""
    deepest = max(s["depth"] for s in summary)
    at = {b: next((s for s in summary if s["block"] == b and s["depth"] == deepest), None) for b in blocks}
    normed = [s for b, s in at.items() if s and b not in ("no_norm", "no_skip")]
    bounded = [as_float_array(s.get("q_theory_high") or s.get("q")) for s in normed]
    q_top = 1.3 * max((float(np.nanmax(v)) for v in bounded if np.isfinite(v).any()), default=np.inf)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), layout="constrained")
    panels = [
        ("per_block_grad", "log10 ||dL/dW|| of the block's 6 kernels (geometric mean)", True),
        ("signal_init", "log10 ||dL/dx_l||, residual stream after block l", True),
        ("q", "q = mean x_l^2, residual stream (shaded, dashed: theory)", False),
        ("c_tokens", "c_tokens after block l (1: every token the same direction)", False),
    ]
    for ax, (key, label, log) in zip(axes.ravel(), panels, strict=True):
        notes: dict[str, list[str]] = {}
        drawn_top = 0.0
        for i, b in enumerate(blocks):
            s = at[b]
            if s is None:
                continue
            values = as_float_array(s.get(key))
            q = as_float_array(s.get("q"))
            if key == "c_tokens" and q.size == values.size:
                values = np.where(np.isfinite(q) & (q < 1e30), values, np.nan)
            shown = np.isfinite(values) & ((values > 0) if log else True)
            if not shown.any():
                notes.setdefault("not drawn (all 0 or non-finite)", []).append(b)
                continue
            if key == "q" and np.nanmax(np.where(shown, values, np.nan)) > q_top:
                notes.setdefault(f"above {q_top:.3g}", []).append(b)
                continue
            x = np.arange(len(values))
            y = np.where(shown, np.log10(np.where(shown, np.abs(values), 1.0)), np.nan) if log else values
            ax.plot(x, y, "-", color=ACT_COLORS(i), label=b)
            drawn_top = max(drawn_top, float(np.nanmax(np.where(shown, values, np.nan))))
            if key == "q" and s.get("q_theory_low") and s["q_theory_low"][0] is not None:
                lo, hi = as_float_array(s["q_theory_low"]), as_float_array(s["q_theory_high"])
                if np.allclose(lo, hi):
                    ax.plot(x, lo, "--", color=ACT_COLORS(i), lw=1, label=f"{b} theory")
                else:
                    ax.fill_between(x, lo, hi, color=ACT_COLORS(i), alpha=0.15, label=f"{b} theory band")
                drawn_top = max(drawn_top, float(np.nanmax(hi)))
        if key == "q" and drawn_top > 0:  # from 0: a normed stream's q of 1 +- 1e-6 is a flat line, not noise
            ax.set_ylim(0.0, 1.15 * drawn_top)
        if notes:
            text = "; ".join(f"{k}: {', '.join(v)}" for k, v in notes.items())
            ax.text(0.01, 0.01, text, transform=ax.transAxes, fontsize=8, va="bottom", color="gray")
        ax.set_xlabel(f"block l (0 = input side), depth {deepest}")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Transformer blocks at initialization, depth {deepest}: where the norm sits")
    return fig
