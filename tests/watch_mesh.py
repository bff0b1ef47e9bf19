"""Run by tests/test_watch.py with four CPU devices: a watched step on a batch sharded by the user over a mesh
gives the statistics of the same step on one device, and leaves the user's sharding as it was."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import decay


class Net(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(4)])
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return self.head(x)


def loss_fn(model, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


assert jax.device_count() == 4, jax.devices()
rng = np.random.default_rng(0)
x, y = rng.standard_normal((32, 8)).astype(np.float32), rng.integers(0, 3, 32).astype(np.int32)
results = []
for sharded in (False, True):
    model = Net(nnx.Rngs(0))
    watch = decay.watch(model, loss_fn)
    batch = (jnp.asarray(x), jnp.asarray(y))
    if sharded:
        mesh = Mesh(np.array(jax.devices()), ("data",))
        batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
    stats = nnx.jit(lambda m, b, w=watch: w.value_and_grad(m, b)[2])(model, batch)
    if sharded:
        assert batch[0].sharding.spec == PartitionSpec("data")  # the user's sharding untouched
    results.append(jax.device_get(stats))
for k in results[0]:
    np.testing.assert_allclose(results[0][k], results[1][k], rtol=2e-5, atol=1e-7, err_msg=k)
print("mesh ok", sorted(results[0]))
