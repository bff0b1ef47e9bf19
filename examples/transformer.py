"""A small pre-LN transformer on a synthetic sequence task, written as a user would, watched by decay.

Task: a sequence of random tokens; at position t the model predicts the token at t - LAG (so it
must attend back). The model's blocks are stacked with nnx.vmap and applied with nnx.scan.
The lines marked `# decay` are all that measuring it takes.

    python -m examples.transformer --workdir=/tmp/watch_transformer   (from the repository root)
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import decay  # decay

LAG = 2


class Block(nnx.Module):
    def __init__(self, dim: int, heads: int, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.down = nnx.Linear(4 * dim, dim, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)
        x = x + self.down(nnx.gelu(self.up(self.ln2(x))))
        return self.perturb("residual", x)  # decay: the residual stream after each block


class Transformer(nnx.Module):
    def __init__(self, vocab: int, seq_len: int, dim: int, heads: int, depth: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (seq_len, dim)))

        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Block(dim, heads, rngs)

        self.blocks = make(rngs)
        self.ln = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens) + self.pos[...]
        mask = nnx.make_causal_mask(tokens)

        @nnx.scan(in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry)
        def body(x, block, mask):
            return block(x, mask)

        return self.head(self.ln(body(x, self.blocks, mask)))


def loss_fn(model, batch):
    tokens = batch
    logits = model(tokens)[:, LAG:]
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, :-LAG]).mean()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="/tmp/watch_transformer")
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=32)
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)

    model = Transformer(args.vocab, args.seq_len, args.dim, args.heads, args.depth, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    batches = (jnp.asarray(rng.integers(0, args.vocab, (args.batch, args.seq_len))) for _ in range(args.steps))

    decay.diagnose(model, loss_fn, jnp.asarray(rng.integers(0, args.vocab, (args.batch, args.seq_len))))  # decay
    watch = decay.watch(model, loss_fn, points="marked")  # decay
    log = decay.WatchLog(args.workdir, watch, every=50)  # decay

    @nnx.jit
    def train_step(model, optimizer, batch):
        return watch.step(model, optimizer, batch)  # decay (was: value_and_grad, optimizer.update)

    for step, batch in enumerate(batches):
        loss, stats = train_step(model, optimizer, batch)
        log.record(step, stats)  # decay
    row = log.close(model)  # decay
    print(f"loss {row['final_loss']:.3f} (chance {np.log(args.vocab):.3f}); {row['verdict']}, chi {row['chi']:.3g}")
    print(f"wrote {args.workdir}/gradient_flow.png, results.jsonl, events, checkpoints/")
    return row


if __name__ == "__main__":
    main()
