"""Fuzzing the depth sweep's command line: random flag combinations, extreme and malformed values included.

Every example either runs (a tiny sweep: results.jsonl gets one row per run) or exits with status 2 and
one line on stderr, `error: --flag...`; never a traceback. The entry point runs in this process (a
`python -m experiments.depth_sweep` per example would spend seconds importing JAX): its flags are
parsed by `experiments._cli.parse_flags` and its `main` called as `experiments._cli.run` does; figures
are built but not rasterized (seconds a sweep). Deterministic (the same examples every run) and bounded:
15 drawn examples, of which a third to a half train, mostly programs already compiled, after `_FOUND`, the
command lines that once broke.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import NamedTuple
from unittest import mock

from absl import flags, logging
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from decay.config import CHECKPOINT_POLICIES
from decay.families import FAMILIES
from decay.instruments import TIERS
from decay.layers import ACTIVATIONS, INITIALIZERS, NORMS
from decay.optim import OPTIMIZERS

HUGE = str(10**12)
INT32_OVER = str(2**31)  # one past the int32 step counter

# Runs cost seconds each, almost all of it compiling: the runs that train mostly share one of a few shapes
# (model, depth, width, activation, norm, batch, steps...), whose programs this process compiles once,
# and vary in what costs no compilation (files, checkpoints, seeds, the rate's value, extreme but legal values).
_SHAPES = [
    ["--model=mlp", "--dataset=digits", "--depths=2", "--width=4", "--activations=tanh", "--norms=none"],
    ["--model=cnn", "--dataset=synthetic", "--depths=1", "--width=2", "--activations=relu", "--norms=batchnorm"],
]
_SHAPE_RUN = ["--steps=2", "--eval_every=1", "--log_every=1", "--instruments=basic", "--batch_size=4"]
_CHEAP = {  # legal values that change no compiled program
    "learning_rates": st.sampled_from(["0.1", "1e-30", "1e30", "3", "0.05,0.1"]),
    "seeds": st.sampled_from(["1", "2"]),
    "data_seed": st.sampled_from(["0", "3", HUGE]),
    "checkpoints": st.sampled_from(CHECKPOINT_POLICIES),
    "checkpoint_every": st.sampled_from(["0", "1", HUGE]),
    "keep_checkpoints": st.sampled_from(["1", "2", HUGE]),
    "init": st.sampled_from(["auto", *INITIALIZERS.names()]),
    "cpu_devices": st.just("1"),  # JAX already started in this process: ignored
    "num_processes": st.just("1"),
    "process_id": st.just("0"),
    "seq_len": st.sampled_from(["0", "-1", HUGE]),  # read by sequence datasets only
    "max_len": st.sampled_from(["0", HUGE]),
}
_BOOLS = ["disk_check", "quiet"]  # drawn as --flag, --noflag or --flag=true|false
_WORKDIRS = ["--workdir={root}/w", "--workdir={root}/a/b/c", "--workdir=", "--workdir=rel", "--workdir={root}/sp ace"]


@st.composite
def cheap_valid_args(draw) -> list[str]:
    """A valid sweep of one or a few tiny runs, of one of `_SHAPES`."""
    args = [*draw(st.sampled_from(_SHAPES)), *_SHAPE_RUN, "--learning_rates=0.1", "--seeds=1"]
    for name in draw(st.lists(st.sampled_from(sorted(_CHEAP)), max_size=4, unique=True)):
        args.append(f"--{name}={draw(_CHEAP[name])}")
    for name in draw(st.lists(st.sampled_from(_BOOLS), max_size=2, unique=True)):
        args.append(draw(st.sampled_from([f"--{name}", f"--no{name}", f"--{name}=true", f"--{name}=false"])))
    args.append(draw(st.sampled_from(_WORKDIRS)))  # one that does not exist yet; empty: runs/depth_sweep-<time>
    return args


# Legal values of any shape: with a malformed setting after them, so that they seldom compile anything.
_OPTIONAL = {
    "optimizer": st.sampled_from(OPTIMIZERS.names()),
    "init": st.sampled_from(["auto", *INITIALIZERS.names()]),
    "instruments": st.sampled_from(TIERS),
    "instrument_every": st.integers(1, 3).map(str),
    "checkpoints": st.sampled_from(CHECKPOINT_POLICIES),
    "residual_scale": st.sampled_from(["0.5", "1", "2"]),
    "weight_var": st.sampled_from(["0.5", "1", "2.5"]),
    "bias_var": st.sampled_from(["0", "0.05"]),
    "clip_norm": st.sampled_from(["0.5", "10"]),
    "warmup_steps": st.integers(0, 2).map(str),
    "weight_decay": st.sampled_from(["0", "1e-4"]),
    "adam_eps": st.sampled_from(["1e-8", "0.1"]),
    "val_fraction": st.sampled_from(["0.1", "0.5"]),
    "bn_momentum": st.sampled_from(["0", "0.9"]),
}


@st.composite
def any_valid_args(draw) -> list[str]:
    """A tiny valid sweep of any shape: one depth (1..3), width 1..8, activation, norm, rate and seed; 0..3 steps."""
    model = draw(st.sampled_from(["mlp", "cnn", "seed_cnn"]))
    args = [
        f"--model={model}",
        f"--dataset={draw(st.sampled_from(['digits', 'synthetic']))}",
        f"--depths={1 if model == 'seed_cnn' else draw(st.integers(1, 3))}",
        f"--width={draw(st.integers(1, 8))}",
        f"--activations={draw(st.sampled_from(ACTIVATIONS.names()))}",
        f"--norms={draw(st.sampled_from(NORMS.names()))}",
        f"--learning_rates={draw(st.sampled_from(['0.01', '0.1', '1']))}",
        "--seeds=1",
        f"--batch_size={draw(st.integers(1, 16))}",
        f"--steps={draw(st.integers(0, 3))}",
        f"--eval_every={draw(st.integers(1, 3))}",
        f"--log_every={draw(st.integers(1, 3))}",
        draw(st.sampled_from(["--residual", "--noresidual", "--histograms", "--nohistograms"])),
    ]
    for name in draw(st.lists(st.sampled_from(sorted(_OPTIONAL)), max_size=3, unique=True)):
        args.append(f"--{name}={draw(_OPTIONAL[name])}")
    args.append(draw(st.sampled_from(_WORKDIRS)))
    return args


# Malformed settings: each must be refused in one line (status 2), whatever came before it on the line.
_NOT_INTS = ["", "abc", "1.5", "1e3", "--1", " "]
_BAD_INTS = {
    "width": ["0", "-1", "-" + HUGE],
    "batch_size": ["0", "-1", "5000", HUGE],
    "steps": ["-1", INT32_OVER, HUGE],
    "eval_every": ["0", "-1"],
    "log_every": ["0", "-1"],
    "seeds": ["0", "-1", HUGE],
    "checkpoint_every": ["-1"],
    "keep_checkpoints": ["0", "-1"],
    "instrument_every": ["0", "-1", INT32_OVER],
    "warmup_steps": ["-1", INT32_OVER, HUGE],
    "data_seed": ["-1"],
    "max_len": ["-1"],
}
_NOT_FINITE = ["nan", "inf", "-inf", "-1e400", "1e400", "", "abc", "0x10", "1,5"]
_BAD_FLOATS = {
    "weight_var": ["0", "-1"],
    "bias_var": ["-1", "-1e-300"],
    "clip_norm": ["0", "-1"],
    "adam_eps": ["0", "-1"],
    "weight_decay": ["-1"],
    "val_fraction": ["0", "1", "-0.5", "1e-9", "0.9999999"],
    "bn_momentum": ["1", "-0.1", "1.5"],
    "input_var": ["0", "-1"],
    "residual_scale": [],
    "forget_bias": [],
}
_BAD_STRS = {
    "model": ["", "bogus", "MLP", "a\nb", "rnn", "transformer", "mlp,cnn"],
    "dataset": ["", "bogus", "mnist", "adding", " digits"],
    "init": ["", "bogus", "Orthogonal"],
    "optimizer": ["", "lbfgs", "adam,sgd"],
    "instruments": ["", "all", "a\nb"],
    "checkpoints": ["", "never"],
    "recurrent_init": ["", "bogus"],
}
_BAD_LISTS = {
    "depths": ["", ",", "2,,3", "0", "-1", "x", "1.5", "2,2", "1,", "1e3", "a\nb"],
    "activations": ["", ",", "tanh,", "Tanh", "tanh,tanh", "softsign", "a\nb"],
    "norms": ["", ",", "none,,none", "groupnorm", "batchnorm,batchnorm"],
    "learning_rates": ["", ",", "0.1,,0.2", "nan", "inf", "-1e400", "1e400", "0", "-0.1", "0.1,0.1", "0.1,0.1000000001", "x"],
}
_MISC = [
    ["--width=" + HUGE],  # must be refused before anything is allocated
    ["--width=" + HUGE, "--checkpoints=none"],
    ["--width=" + HUGE, "--nodisk_check"],
    ["--steps=" + INT32_OVER, "--nodisk_check", "--log_every=" + HUGE, "--eval_every=" + HUGE],
    ["--instrument_every=" + INT32_OVER, "--instruments=full"],
    ["--depths=" + HUGE],
    ["--bogus=1"],
    ["--widht=4"],
    ["-x"],
    ["--width"],
    ["extra"],
    ["--", "extra"],
    ["--seed=1"],  # swept: not a flag of the depth sweep
    ["--depth=2"],
    ["--quiet=maybe"],
    ["--noquiet=1"],
    ["--nodisk_check=1"],
    ["--residual=2"],
    ["--num_processes=2"],
    ["--num_processes=2", "--coordinator_address=localhost", "--process_id=0"],
    ["--num_processes=2", "--coordinator_address=localhost:1", "--process_id=2"],
    ["--num_processes=2", "--coordinator_address=localhost:1", "--process_id=-1"],
    ["--num_processes=0"],
    ["--num_processes=-3"],
    ["--num_processes=x"],
    ["--process_id=x"],
    ["--cpu_devices=0"],
    ["--cpu_devices=-2"],
    ["--cpu_devices=x"],
    ["--workdir={file}"],  # a file, not a folder
    ["--workdir={file}/w"],
    ["--dataset=mnist", "--data_dir={root}/nowhere"],
    ["--dataset=mnist", "--data_dir={root}/no\nwhere"],
    ["--dataset=cifar10", "--data_dir={file}"],
    ["--model=rnn", "--dataset=adding", "--seq_len=3"],  # recurrent: the time sweep's
    ["--model=lstm", "--dataset=copy", "--seq_len=0"],
    ["--model=transformer", "--dataset=patch_digits", "--norms=layernorm"],
    ["--model=seed_cnn", "--depths=2"],
    ["--verbosity=x"],
    ["--stderrthreshold=bogus"],  # absl's own flags
    ["--flagfile={root}/nowhere"],
    ["--width=a\nb"],
]


def _pairs(table: dict[str, list[str]], common: list[str]) -> st.SearchStrategy[list[str]]:
    flag = st.sampled_from(sorted(table))
    return flag.flatmap(lambda f: st.sampled_from([*table[f], *common]).map(lambda v: [f"--{f}={v}"]))


def _bad_args() -> st.SearchStrategy[list[str]]:
    return st.one_of(
        _pairs(_BAD_INTS, _NOT_INTS),
        _pairs(_BAD_FLOATS, _NOT_FINITE),
        _pairs(_BAD_STRS, []),
        _pairs(_BAD_LISTS, []),
        st.sampled_from(_MISC),
    )


@st.composite
def command_lines(draw) -> list[str]:
    """One time in three a valid sweep that trains; otherwise any tiny sweep, then one or two malformed settings
    (the last value of a flag wins)."""
    if draw(st.integers(0, 2)) == 0:
        return draw(cheap_valid_args())
    args = draw(any_valid_args())
    for _ in range(draw(st.integers(1, 2))):
        args += draw(_bad_args())
    return args


# Command lines that once ended in a traceback or in more than one line, tried on every run before the drawn ones.
_TINY = ["--depths=1", "--width=4", "--activations=tanh", "--norms=none", "--learning_rates=0.1", "--seeds=1", "--steps=1"]
_FOUND = [
    [*_TINY, "--width=" + HUGE, "--checkpoints=none"],  # allocated: out of memory (decay.program.init_state)
    [*_TINY, "--width=" + HUGE, "--nodisk_check"],
    [*_TINY, "--steps=" + INT32_OVER, "--nodisk_check", "--log_every=" + HUGE, "--eval_every=" + HUGE],  # int32 overflow
    [*_TINY, "--warmup_steps=" + INT32_OVER],
    [*_TINY, "--instrument_every=" + INT32_OVER, "--instruments=full"],
    [*_TINY, "--seeds=" + HUGE],  # a list of 10**12 run configs
    [*_TINY, "--noquiet=1"],  # absl raises ValueError, not flags.Error
    [*_TINY, "--stderrthreshold=bogus"],
    [*_TINY, "--width=a\nb"],  # absl's message quotes the value as given: two lines
    [*_TINY, "--depths=a\nb"],
    [*_TINY, "--flagfile={root}/nowhere"],  # absl's message names no flag
    [*_TINY, "--bogus=1"],  # absl's message names the flag without its dashes
    [*_TINY, "--dataset=mnist", "--data_dir={root}/no\nwhere"],
    [*_TINY, "--depths=2", "--residual", "--residual_scale=1e300", "--steps=0", "--checkpoints=none"],  # theory: alpha**2
]


class Outcome(NamedTuple):
    code: int  # the exit status
    out: str
    err: str
    runs: int | None  # the sweep's runs, when it ran


def _call_main(argv: list[str]) -> int | None:
    """`experiments._cli.run(depth_sweep.main)` minus absl's app.run: the exit status, None when main returned."""
    from experiments import _cli, depth_sweep

    try:
        _cli.guard(depth_sweep.main)(_cli.parse_flags(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return None


def _no_render(fig, fname, *args, **kwargs) -> None:
    """`Figure.savefig` without rasterizing (seconds a sweep): the figure is built, a file written where asked."""
    with open(fname, "wb"):
        pass


def _run(argv: list[str], root, capfd) -> Outcome:
    """Runs the depth sweep's command line `argv` in this process, cwd `root`; flags and logging left as found."""
    import jax

    from decay import workdir
    from experiments import depth_sweep

    jax.devices()  # JAX's backend started as the other tests have it: parse_flags's --cpu_devices then changes nothing
    argv = ["depth_sweep", *argv]
    verbosity, disk_check = logging.get_verbosity(), workdir._DISK_CHECK[0]
    capfd.readouterr()
    flags.FLAGS.unparse_flags()
    try:
        with (
            contextlib.chdir(root),
            mock.patch.object(sys, "argv", argv),
            mock.patch("matplotlib.figure.Figure.savefig", _no_render),
        ):
            code = _call_main(argv)
            runs = None
            if code is None:
                grid = depth_sweep._DEPTHS, depth_sweep._ACTIVATIONS, depth_sweep._NORMS, depth_sweep._LRS
                runs = depth_sweep._SEEDS.value
                for holder in grid:
                    runs *= len(holder.value)
    finally:
        flags.FLAGS.unparse_flags()
        logging.set_verbosity(verbosity)
        workdir.configure(disk_check)
    out = capfd.readouterr()
    return Outcome(0 if code is None else code, out.out, out.err, runs)


def _examples(lines: list[list[str]]):
    def add(test):
        for argv in reversed(lines):
            test = example(argv=argv)(test)
        return test

    return add


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failing example costs seconds a try; it is shown whole
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(argv=command_lines())
@_examples(_FOUND)
def test_any_command_line_runs_or_fails_in_one_line(argv, tmp_path_factory, capfd):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "a_file").write_text("")
    argv = [a.replace("{root}", str(root)).replace("{file}", str(root / "a_file")) for a in argv]
    full = ["--workdir=" + str(root / "w"), "--quiet", "--compilation_cache=", *argv]
    o = _run(full, root, capfd)
    where = f"argv: {full}\nstatus {o.code}\nstderr:\n{o.err}"
    assert o.code in (0, 2) and "Traceback" not in o.err, where
    if o.code == 0:
        found = sorted(root.rglob("results.jsonl"))
        assert len(found) == 1, where
        rows = [json.loads(line) for line in found[0].read_text().splitlines()]
        assert len(rows) == o.runs, where
    else:
        lines = o.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--" in lines[0], where


def test_the_fuzzed_flags_are_the_sweeps():
    """Every flag the fuzzer draws (but the deliberately unknown ones) is one of the sweep's: a renamed flag would
    otherwise turn its cases into unknown-flag errors. Every model named is registered."""
    from experiments import depth_sweep  # noqa: F401  defines the sweep's flags

    lines = [*_SHAPES, _SHAPE_RUN, _WORKDIRS, *_MISC]
    named = {a.split("=")[0].lstrip("-") for args in lines for a in args if a.startswith("--") and "=" in a}
    named = {n[2:] if n.startswith("no") and n[2:] in flags.FLAGS else n for n in named}
    tables = [_CHEAP, _BOOLS, _OPTIONAL, _BAD_INTS, _BAD_FLOATS, _BAD_STRS, _BAD_LISTS]
    for name in (named - {"bogus", "widht", "seed", "depth", "flagfile"}) | {name for table in tables for name in table}:
        assert name in flags.FLAGS, name
    models = {a.split("=")[1] for args in [*_SHAPES, *_MISC] for a in args if a.startswith("--model=")}
    assert models <= set(FAMILIES.names())
