"""The PyTorch eager reference of the sweep-speed benchmark: what the seed's users write today.

An MLP like decay's (`depth` hidden layers: Linear -> [BatchNorm1d] -> activation, then a
linear head), the same initializations (truncated-normal He / LeCun kernels, zero biases),
the same minibatch schedule shape (a fresh permutation per epoch), plain SGD, and after every
`backward()` the per-layer kernel-gradient norms read to the host, as a hook-based script
would. A test evaluation every `eval_every` steps. Imported only by the benchmark.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn


def _act(name: str) -> nn.Module:
    return {"tanh": nn.Tanh(), "relu": nn.ReLU(), "sigmoid": nn.Sigmoid()}[name]


def build(d_in: int, width: int, depth: int, num_classes: int, activation: str, norm: str, seed: int) -> nn.Sequential:
    """The decay MLP in PyTorch: truncated-normal kernels, He for ReLU, LeCun otherwise."""
    torch.manual_seed(seed)
    gain = 2.0 if activation == "relu" else 1.0
    layers: list[nn.Module] = []
    hidden: list[nn.Linear] = []
    fan_in = d_in
    for _ in range(depth):
        lin = nn.Linear(fan_in, width)
        # Flax's variance_scaling truncated normal: std = sqrt(gain / fan_in) / .87962566.
        nn.init.trunc_normal_(lin.weight, std=math.sqrt(gain / fan_in) / 0.87962566103423978, a=-2.0, b=2.0)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        hidden.append(lin)
        if norm == "batchnorm":
            layers.append(nn.BatchNorm1d(width, eps=1e-5, momentum=0.1))
        layers.append(_act(activation))
        fan_in = width
    layers.append(nn.Linear(width, num_classes))
    net = nn.Sequential(*layers)
    net.hidden = hidden  # the layers whose gradient norms are read
    return net


def train_run(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    width: int,
    depth: int,
    activation: str,
    norm: str,
    seed: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    eval_every: int,
) -> dict:
    """One run; returns the per-step loss and per-layer gradient norms, test accuracy and times."""
    t0 = time.perf_counter()
    xs = torch.from_numpy(x_train.reshape(len(x_train), -1))
    ys = torch.from_numpy(y_train.astype(np.int64))
    xt = torch.from_numpy(x_test.reshape(len(x_test), -1))
    yt = torch.from_numpy(y_test.astype(np.int64))
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    net = build(xs.shape[1], width, depth, num_classes, activation, norm, seed)
    opt = torch.optim.SGD(net.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    per_epoch = len(xs) // batch_size
    losses, grad_norms, step_times = [], [], []
    accuracy = None
    perm = None
    for step in range(steps):
        ts = time.perf_counter()
        if step % per_epoch == 0:
            perm = torch.randperm(len(xs), generator=gen)
        idx = perm[(step % per_epoch) * batch_size : (step % per_epoch + 1) * batch_size]
        net.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xs[idx]), ys[idx])
        loss.backward()
        norms = torch.stack([lin.weight.grad.norm() for lin in net.hidden])
        opt.step()
        losses.append(loss.item())
        grad_norms.append(norms.tolist())
        step_times.append(time.perf_counter() - ts)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            net.eval()
            with torch.no_grad():
                accuracy = (net(xt).argmax(-1) == yt).float().mean().item()
    return {
        "losses": losses,
        "grad_norms": grad_norms,
        "test_accuracy": accuracy,
        "step_times": step_times,
        "wall_time_s": time.perf_counter() - t0,
    }


def main(argv: list[str]) -> None:
    """Trains the grid of the flags with the reference loop and prints one JSON line of timings."""
    del argv
    import json
    import statistics

    from absl import flags

    f = flags.FLAGS
    t0 = time.perf_counter()
    from decay.data import load  # the same synthetic data as decay's runs (NumPy only)

    data = load(f.dataset, None, 0)
    configs = {}
    for depth in (int(d) for d in f.depths):
        for activation in f.activations:
            for norm in f.norms:
                for seed in range(f.seeds):
                    r = train_run(
                        data.x_train,
                        data.y_train,
                        data.x_test,
                        data.y_test,
                        width=f.width,
                        depth=depth,
                        activation=activation,
                        norm=norm,
                        seed=seed,
                        steps=f.steps,
                        batch_size=f.batch_size,
                        learning_rate=f.learning_rate,
                        eval_every=f.eval_every,
                    )
                    name = f"d{depth}-{activation}-{norm}-s{seed}"
                    configs[name] = {
                        "wall_time_s": r["wall_time_s"],
                        "median_step_ms": 1e3 * statistics.median(r["step_times"][10:] or r["step_times"]),
                        "test_accuracy": r["test_accuracy"],
                    }
    print(json.dumps({"threads": torch.get_num_threads(), "runs": configs, "total_s": time.perf_counter() - t0}))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_list("depths", ["4", "16", "32"], "Hidden-layer counts.")
    flags.DEFINE_list("activations", ["tanh", "relu"], "tanh, relu or sigmoid.")
    flags.DEFINE_list("norms", ["none", "batchnorm"], "none or batchnorm.")
    flags.DEFINE_integer("seeds", 2, "Seeds per grid point.")
    flags.DEFINE_integer("width", 128, "Units per hidden layer.")
    flags.DEFINE_integer("batch_size", 128, "Examples per step.")
    flags.DEFINE_integer("steps", 300, "Steps per run.")
    flags.DEFINE_integer("eval_every", 100, "Steps between test evaluations.")
    flags.DEFINE_float("learning_rate", 0.02, "SGD learning rate.")
    flags.DEFINE_string("dataset", "synthetic", "digits or synthetic.")
    app.run(main)
