"""The mutation check: plausible one-line bugs put into the library, and whether the tests catch each.

    python -m tests.mutations                 # every mutant, two at a time (about 10 minutes on 2 cores)
    python -m tests.mutations --only=adamw_as_adam,probe_after_norm
    python -m tests.mutations --list

Each mutant is one textual edit of one file of `decay/`, applied to a copy of the repository in
a temporary folder; the tests named for it then run there (`pytest -x`). A mutant is caught
when those tests fail, and missed when they pass. First the unmutated copy runs every named test
once: a failure there is a broken suite, not a caught mutant. Not part of the 5-minute suite.
Exit status: 0 when every mutant is caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Mutant(NamedTuple):
    name: str
    path: str  # a file of the repository
    old: str  # text that occurs exactly once in it
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root
    why: str  # the bug in words


REF = "tests/test_references.py"
M = Mutant
MUTANTS = [
    M(
        "hutchinson_uniform",
        "decay/instruments.py",
        "jax.random.rademacher(kk, p.shape, p.dtype)",
        "jax.random.uniform(kk, p.shape, p.dtype, -1.0, 1.0)",
        (
            "tests/test_instruments.py::test_hutchinson_is_exact_for_a_diagonal_hessian",
            "tests/test_instruments.py::test_hutchinson_trace_matches_the_exact_trace_within_its_error",
        ),
        "Hutchinson probes uniform on [-1, 1] instead of Rademacher (expected trace a third of the true one)",
    ),
    M(
        "exploding_threshold_10",
        "decay/metrics.py",
        "EXPLODING_ABOVE = 1e2",
        "EXPLODING_ABOVE = 1e1",
        ("tests/test_metrics.py",),
        "exploding verdict from a gain of 10 instead of 100",
    ),
    M(
        "vanishing_threshold_5e-3",
        "decay/metrics.py",
        "VANISHING_BELOW = 1e-2",
        "VANISHING_BELOW = 5e-3",
        ("tests/test_metrics.py",),
        "vanishing verdict from a gain of 5e-3 instead of 1e-2",
    ),
    M(
        "vanishing_boundary_le",
        "decay/metrics.py",
        "if gain < math.log10(VANISHING_BELOW):",
        "if gain <= math.log10(VANISHING_BELOW):",
        ("tests/test_metrics.py",),
        "<= instead of < at the vanishing threshold",
    ),
    M(
        "fit_window_at_4",
        "decay/metrics.py",
        "    if depth >= 8:\n        return depth // 4",
        "    if depth >= 4:\n        return depth // 4",
        ("tests/test_metrics.py", REF),
        "the chi fit drops the outer layers from depth 4 instead of 8",
    ),
    M(
        "fit_sign",
        "decay/metrics.py",
        "return float(np.exp(-slope))",
        "return float(np.exp(slope))",
        ("tests/test_metrics.py",),
        "chi fitted with the wrong sign of the slope",
    ),
    M(
        "gain_over_depth",
        "decay/metrics.py",
        "return (depth - 1) * math.log10(chi)",
        "return depth * math.log10(chi)",
        ("tests/test_metrics.py",),
        "the gain taken as chi^depth instead of chi^(depth - 1)",
    ),
    M(
        "probe_after_norm",
        "decay/blocks.py",
        "            h = h + probe\n        if self.choice is None:\n            z = self.norm(h, train)\n",
        "            pass\n        if self.choice is None:\n            z = self.norm(h, train)\n"
        "            if probe is not None:\n                z = z + probe\n",
        (REF,),
        "the backprop signal probed after the norm instead of on the linear output",
    ),
    M(
        "residual_scale_ignored",
        "decay/blocks.py",
        "out = y if alpha is None else h + alpha * y",
        "out = y if alpha is None else h + y",
        (REF,),
        "the residual branch scale alpha ignored",
    ),
    M(
        "adamw_as_adam",
        "decay/optim.py",
        "optax.adamw(lr, eps=eps, weight_decay=1e-4)",
        "optax.adam(lr, eps=eps)",
        (REF,),
        "adamw without its decoupled weight decay",
    ),
    M("momentum_as_sgd", "decay/optim.py", "optax.sgd(lr, momentum=0.9)", "optax.sgd(lr)", (REF,), "momentum without momentum"),
    M(
        "nesterov",
        "decay/optim.py",
        "optax.sgd(lr, momentum=0.9)",
        "optax.sgd(lr, momentum=0.9, nesterov=True)",
        (REF,),
        "Nesterov momentum where heavy-ball is documented",
    ),
    M(
        "weight_decay_sign",
        "decay/optim.py",
        "optax.add_decayed_weights(weight_decay)",
        "optax.add_decayed_weights(-weight_decay)",
        (REF,),
        "L2 weight decay with the wrong sign",
    ),
    M(
        "clip_the_update",
        "decay/optim.py",
        "tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)",
        "tx = optax.chain(tx, optax.clip_by_global_norm(clip_norm))",
        (REF,),
        "clipping the update instead of the gradient",
    ),
    M(
        "rmsnorm_identity",
        "decay/layers.py",
        "        return holder.rms(x)",
        "        return x",
        (REF,),
        "rmsnorm as the identity",
    ),
    M("leaky_slope", "decay/layers.py", "negative_slope=0.01", "negative_slope=0.1", (REF,), "leaky ReLU slope 0.1, not 0.01"),
    M(
        "gelu_tanh_approximation",
        "decay/layers.py",
        "jax.nn.gelu, approximate=False",
        "jax.nn.gelu, approximate=True",
        (REF,),
        "GELU's tanh approximation where theory assumes the erf form",
    ),
    M(
        "hard_sigmoid",
        "decay/layers.py",
        'ACTIVATIONS.add("sigmoid", jax.nn.sigmoid)',
        'ACTIVATIONS.add("sigmoid", jax.nn.hard_sigmoid)',
        (REF,),
        "a piecewise-linear sigmoid",
    ),
    M(
        "hard_swish",
        "decay/layers.py",
        'ACTIVATIONS.add("swish", jax.nn.swish)',
        'ACTIVATIONS.add("swish", jax.nn.hard_swish)',
        (REF,),
        "hard swish for swish",
    ),
    M(
        "elu_alpha",
        "decay/layers.py",
        'ACTIVATIONS.add("elu", jax.nn.elu)',
        'ACTIVATIONS.add("elu", functools.partial(jax.nn.elu, alpha=0.5))',
        (REF,),
        "ELU with alpha 0.5",
    ),
    M(
        "batchnorm_running_stats_in_training",
        "decay/layers.py",
        "use_running_average=not train",
        "use_running_average=train",
        (REF,),
        "batchnorm normalizes with running averages in training, batch statistics in evaluation",
    ),
    M(
        "batchnorm_momentum_convention",
        "decay/layers.py",
        "nnx.BatchNorm(features, momentum=momentum,",
        "nnx.BatchNorm(features, momentum=1 - momentum,",
        (REF,),
        "PyTorch's momentum convention (weight of the new batch) given to Flax",
    ),
    M(
        "per_sample_scale",
        "decay/instruments.py",
        "g2 = b * b * in_norm2 * p2",
        "g2 = b * in_norm2 * p2",
        ("tests/test_instruments.py",),
        "per-sample gradients scaled by B instead of B^2 in their squared norm",
    ),
    M(
        "c_denominator",
        "decay/instruments.py",
        "/ (b * (b - 1))",
        "/ (b * b)",
        (REF,),
        "c averaged over B^2 pairs, self-pairs' slots included",
    ),
    M(
        "dead_any",
        "decay/instruments.py",
        "jnp.all(units <= 0, axis=0)",
        "jnp.any(units <= 0, axis=0)",
        (REF,),
        "a unit counted dead when inactive on any example",
    ),
    M(
        "distance_squared",
        "decay/instruments.py",
        "return jnp.sqrt(jnp.sum(jnp.square(kernels - anchor), axis=axes) / jnp.sum(jnp.square(anchor), axis=axes))",
        "return jnp.sum(jnp.square(kernels - anchor), axis=axes) / jnp.sum(jnp.square(anchor), axis=axes)",
        ("tests/test_instruments.py::test_distance_from_init_is_zero_at_init_and_matches_the_checkpoints",),
        "distance from init without the square root",
    ),
    M(
        "momentum_edge_of_stability",
        "decay/row.py",
        '"momentum": 3.8',
        '"momentum": 2.0',
        (REF,),
        "the edge of stability 2/lr for momentum, whose edge is 2(1 + beta)/lr",
    ),
    M(
        "eval_split_order",
        "decay/program.py",
        'SPLITS = ("val", "test", "train")',
        'SPLITS = ("test", "val", "train")',
        (REF,),
        "the evaluated splits read back in the wrong order (test numbers reported as validation)",
    ),
    M(
        "eval_split_offset",
        "decay/program.py",
        "        start += n\n",
        "        start = n\n",
        (REF,),
        "each split's examples read from the wrong offset of the concatenated evaluation",
    ),
    M(
        "same_permutation_every_epoch",
        "decay/step.py",
        "jax.random.fold_in(data_key, step // per_epoch)",
        "jax.random.fold_in(data_key, 0)",
        (REF,),
        "the same minibatch order in every epoch",
    ),
    M(
        "batch_offset",
        "decay/step.py",
        "((step % per_epoch) * batch_size,)",
        "((step // per_epoch) * batch_size,)",
        (REF,),
        "the minibatch offset from the epoch instead of the step within it",
    ),
    M(
        "resume_skips_a_step",
        "decay/loop.py",
        "self.record = RunRecord.from_json(progress)",
        'self.record = RunRecord.from_json({**progress, "done": progress["done"] + 1})',
        ("tests/test_checkpoints.py::test_killed_and_resumed_run_equals_uninterrupted",),
        "a resumed run skips one step",
    ),
    M(
        "halted_run_keeps_training",
        "decay/step.py",
        "keep = finite & ~state.halted",
        "keep = finite",
        ("tests/test_models.py::test_a_halted_run_stays_halted_after_a_finite_batch",),
        "a run that saw Inf keeps updating",
    ),
    M(
        "standardize_on_test",
        "decay/data.py",
        "mean, std = float(ds.x_train.mean()), float(ds.x_train.std())",
        "mean, std = float(ds.x_test.mean()), float(ds.x_test.std())",
        ("tests/test_data.py",),
        "inputs standardized with test statistics",
    ),
    M(
        "validation_left_in_train",
        "decay/data.py",
        "x_train=ds.x_train[~pick], y_train=ds.y_train[~pick]",
        "x_train=ds.x_train, y_train=ds.y_train",
        ("tests/test_data.py",),
        "the validation examples also trained on",
    ),
    M(
        "mnist_transposed",
        "decay/data.py",
        'return _raw("mnist", xtr[..., None]',
        'return _raw("mnist", xtr.transpose(0, 2, 1)[..., None]',
        ("tests/test_data.py",),
        "MNIST images read column-major",
    ),
    M(
        "he_fan_avg",
        "decay/layers.py",
        'INITIALIZERS.add("he_normal", _vs(2.0, "fan_in", "truncated_normal"))',
        'INITIALIZERS.add("he_normal", _vs(2.0, "fan_avg", "truncated_normal"))',
        (REF,),
        "He init scaled by the average fan instead of fan_in",
    ),
    M(
        "bias_std_as_variance",
        "decay/layers.py",
        "jax.nn.initializers.normal(stddev=math.sqrt(bias_var))",
        "jax.nn.initializers.normal(stddev=bias_var)",
        (REF,),
        "--bias_var used as a standard deviation",
    ),
    M(
        "group_verdict_mean",
        "decay/metrics.py",
        "return verdict(float(np.median(chis)),",
        "return verdict(float(np.mean(chis)),",
        (REF,),
        "a configuration's verdict from the mean chi over seeds, not the median shown",
    ),
    M(
        "normal_quantile_for_t",
        "decay/stats.py",
        "return float(t.ppf(0.975, df))",
        "return 1.959963984540054",
        ("tests/test_stats.py",),
        "intervals over a few seeds with the normal quantile 1.96 instead of Student's t",
    ),
    M(
        "std_ddof0",
        "decay/stats.py",
        "std = float(v.std(ddof=1))",
        "std = float(v.std(ddof=0))",
        ("tests/test_stats.py",),
        "population instead of sample std over seeds",
    ),
    M(
        "forget_bias_on_input_gate",
        "decay/families/rnn.py",
        "return b.at[w : 2 * w].add(cfg.forget_bias)",
        "return b.at[0:w].add(cfg.forget_bias)",
        ("tests/test_recurrent.py",),
        "the LSTM's forget bias lands on the input gate",
    ),
    M(
        "cell_probe_after_output",
        "decay/families/rnn.py",
        "return (jax.nn.sigmoid(o) * self.act(c) + p_h, c), g",
        "return (jax.nn.sigmoid(o) * self.act(c - (0.0 if p is None else p[:, width:])) + p_h, c), g",
        ("tests/test_recurrent.py",),
        "the cell-state probe enters after h_t is formed: dL/dc_t misses the path through h_t",
    ),
    M(
        "gru_reset_outside",
        "decay/families/rnn.py",
        "(pre_n,) = self._gates(xu[:, 2 * width :] + r * hw[:, 2 * width :], 2, 1)",
        "(pre_n,) = self._gates(xu[:, 2 * width :] + hw[:, 2 * width :], 2, 1)",
        ("tests/test_recurrent.py",),
        "the GRU's reset gate does not gate the recurrent candidate",
    ),
    M(
        "rnn_theory_no_input_variance",
        "decay/families/rnn.py",
        "q = (float(theory.variance_map(activation, wv, 0.0, q)) if t else 0.0) + uv * m_t + bv",
        "q = (float(theory.variance_map(activation, wv, 0.0, q)) if t else 0.0) + bv",
        ("tests/test_recurrent.py",),
        "the rnn's mean-field map forgets the input's variance added every step",
    ),
    M(
        "transformer_theory_no_mlp_term",
        "decay/families/transformer.py",
        "low = [*(q0 + blocks * (a_lo + f)),",
        "low = [*(q0 + blocks * a_lo),",
        ("tests/test_transformer.py",),
        "the pre_ln stream's predicted growth leaves out the MLP sublayer's contribution",
    ),
    M(
        "transformer_causal_mask_inverted",
        "decay/families/transformer.py",
        "jnp.tril(jnp.ones((n, n), bool))",
        "jnp.triu(jnp.ones((n, n), bool))",
        ("tests/test_transformer.py",),
        "a causal model reads later tokens instead of earlier ones",
    ),
    M(
        "shared_choice_swapped",
        "decay/layers.py",
        "[choices.activations.index(activation), choices.norms.index(norm)]",
        "[choices.norms.index(norm), choices.activations.index(activation)]",
        ("tests/test_programs.py",),
        "a shared layer's choice reads the norm's index as the activation's and the other way round",
    ),
    M(
        "batch_runs_not_spread",
        "decay/devices.py",
        "return [(i % n_devices) * slots + i // n_devices for i in range(runs)]",
        "return list(range(runs))",
        ("tests/test_programs.py",),
        "a batch's runs placed in the first slots, not spread over the devices (some never stepped)",
    ),
]


def _copy_repo(dest: pathlib.Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def _pytest(cwd: pathlib.Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DECAY_TEST_SCRATCH", None)
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return (
        out.returncode,
        (lines[0] if lines else out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""),
        time.perf_counter() - t0,
    )


def run_mutant(m: Mutant, scratch: pathlib.Path) -> tuple[str, str, float]:
    """('caught' | 'MISSED' | 'bad mutant', what failed, seconds) of one mutant in its own copy of the snapshot."""
    dest = scratch / m.name
    shutil.copytree(scratch / "unmutated", dest)
    path = dest / m.path
    text = path.read_text()
    if text.count(m.old) != 1:
        return "bad mutant", f"{m.path}: the text to replace occurs {text.count(m.old)} times", 0.0
    path.write_text(text.replace(m.old, m.new))
    code, what, secs = _pytest(dest, m.tests)
    shutil.rmtree(dest, ignore_errors=True)
    if code == 1:
        return "caught", what, secs
    if code == 0:
        return "MISSED", "all named tests passed", secs
    return "caught (error)", what or f"pytest exit {code}", secs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated mutant names")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at the same time")
    args = parser.parse_args(argv)
    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("tests/mutations.py: duplicate mutant names")
    chosen = MUTANTS
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"--only: unknown mutant(s) {', '.join(unknown)}; --list shows the names")
        chosen = [m for m in MUTANTS if m.name in wanted]
    if args.list:
        for m in chosen:
            print(f"{m.name:38s} {m.path:24s} {m.why}")
        return 0
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="decay-mutations-"))
    try:
        base = scratch / "unmutated"
        _copy_repo(base)  # one snapshot of the working tree: edits made while the check runs do not leak in
        tests = tuple(sorted({t for m in chosen for t in m.tests}))
        code, what, secs = _pytest(base, tests)
        if code != 0:
            print(f"the unmutated tests fail ({what}); fix the suite first")
            return 2
        print(f"unmutated: {len(tests)} test selections pass ({secs:.0f} s)", file=sys.stderr)
        results = {}
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(run_mutant, m, scratch): m for m in chosen}
            for fut in concurrent.futures.as_completed(futures):
                m = futures[fut]
                results[m.name] = fut.result()
                print(f"{m.name}: {results[m.name][0]} ({results[m.name][2]:.0f} s)", file=sys.stderr, flush=True)
        print("| mutant | file | bug | result | first failing test |\n|---|---|---|---|---|")
        for m in chosen:
            status, what, _ = results[m.name]
            print(f"| {m.name} | {m.path} | {m.why} | {status} | {what.split(' - ')[0].removeprefix('FAILED ')} |")
        caught = sum(r[0].startswith("caught") for r in results.values())
        print(f"\n{caught} of {len(chosen)} mutants caught")
        return 0 if caught == len(chosen) else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
