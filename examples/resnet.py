"""A small ResNet with BatchNorm on the 8x8 handwritten digits (scikit-learn's copy), written as a user would,
watched by decay. The blocks are a Python list (not scanned). The lines marked `# decay` are all that
measuring it takes; no point is marked in the model: every nnx.Conv and nnx.Linear output is probed.

    python -m examples.resnet --workdir=/tmp/watch_resnet   (from the repository root)
"""

import argparse

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import decay  # decay


class ResBlock(nnx.Module):
    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, channels, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(channels, rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(channels, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn1(self.conv1(x)))
        return nnx.relu(x + self.bn2(self.conv2(h)))


class ResNet(nnx.Module):
    def __init__(self, channels: int, blocks: int, classes: int, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, channels, (3, 3), rngs=rngs)
        self.blocks = nnx.List([ResBlock(channels, rngs) for _ in range(blocks)])
        self.head = nnx.Linear(channels, classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


def loss_fn(model, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="/tmp/watch_resnet")
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args(argv)

    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    model = ResNet(args.channels, args.blocks, 10, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(args.lr, momentum=0.9), wrt=nnx.Param)
    rng = np.random.default_rng(0)

    def batches():
        for _ in range(args.steps):
            i = rng.choice(len(x), args.batch, replace=False)
            yield jnp.asarray(x[i]), jnp.asarray(y[i])

    decay.diagnose(model, loss_fn, (jnp.asarray(x[:128]), jnp.asarray(y[:128])))  # decay
    watch = decay.watch(model, loss_fn, points="linear")  # decay
    log = decay.WatchLog(args.workdir, watch, every=50)  # decay

    @nnx.jit
    def train_step(model, optimizer, batch):
        return watch.step(model, optimizer, batch)  # decay (was: value_and_grad, optimizer.update)

    for step, batch in enumerate(batches()):
        loss, stats = train_step(model, optimizer, batch)
        log.record(step, stats)  # decay
    row = log.close(model)  # decay
    model.eval()
    accuracy = float(jnp.mean(jnp.argmax(model(jnp.asarray(x)), -1) == jnp.asarray(y)))
    print(f"loss {row['final_loss']:.3f}, accuracy {accuracy:.3f} (all 1797 digits); {row['verdict']}, chi {row['chi']:.3g}")
    print(f"wrote {args.workdir}/gradient_flow.png, results.jsonl, events, checkpoints/")
    return row


if __name__ == "__main__":
    main()
