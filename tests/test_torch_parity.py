"""The seed's example net in decay (`seed_cnn`) against the seed's own PyTorch code.

Identical weights in both; on the same batch in training mode (batch statistics), the loss,
every parameter's gradient and the parameters after one SGD step (lr 0.01) must agree to
float32 tolerance. PyTorch is a test-only dependency (requirements-torch.txt).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from flax import nnx

from decay import data, optim
from decay.program import init_state
from decay.step import grads_and_stats, train_step
from tests.conftest import tiny_config

if os.environ.get("CI") == "true":  # CI installs PyTorch (.ci/run): there a missing torch fails, never skips
    import torch
else:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install -r requirements-torch.txt")
nn = torch.nn


def seed_net(flat: int):
    """The seed's `Net`, verbatim but for the missing `import torch` (above) and the flatten size (1350 -> `flat`)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 3)
            self.bn1 = nn.BatchNorm2d(6)
            self.fc1 = nn.Linear(flat, 10)

        def forward(self, x):
            x = self.conv1(x)
            x = self.bn1(x)
            x = torch.relu(x)
            x = x.view(-1, flat)
            x = self.fc1(x)
            return x

    return Net()


def _copy_weights(params: dict, net, side: int) -> None:
    """decay (NHWC, kernels HWIO, flatten in H, W, C order) -> PyTorch (NCHW, OIHW, flatten in C, H, W order)."""
    stem = params["stem"]
    out = side - 2
    with torch.no_grad():
        net.conv1.weight.copy_(torch.from_numpy(np.asarray(stem["linear"]["kernel"]).transpose(3, 2, 0, 1).copy()))
        net.conv1.bias.copy_(torch.from_numpy(np.array(stem["linear"]["bias"])))
        net.bn1.weight.copy_(torch.from_numpy(np.array(stem["norm"]["bn"]["scale"])))
        net.bn1.bias.copy_(torch.from_numpy(np.array(stem["norm"]["bn"]["bias"])))
        k = np.asarray(params["head"]["kernel"]).reshape(out, out, 6, 10).transpose(3, 2, 0, 1).reshape(10, -1)
        net.fc1.weight.copy_(torch.from_numpy(k.copy()))
        net.fc1.bias.copy_(torch.from_numpy(np.array(params["head"]["bias"])))


def _as_torch_layout(tree: dict, side: int) -> dict[str, np.ndarray]:
    """decay's parameter (or gradient) tree in PyTorch's names and layouts."""
    out = side - 2
    stem = tree["stem"]
    return {
        "conv1.weight": np.asarray(stem["linear"]["kernel"]).transpose(3, 2, 0, 1),
        "conv1.bias": np.asarray(stem["linear"]["bias"]),
        "bn1.weight": np.asarray(stem["norm"]["bn"]["scale"]),
        "bn1.bias": np.asarray(stem["norm"]["bn"]["bias"]),
        "fc1.weight": np.asarray(tree["head"]["kernel"]).reshape(out, out, 6, 10).transpose(3, 2, 0, 1).reshape(10, -1),
        "fc1.bias": np.asarray(tree["head"]["bias"]),
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_seed_cnn_matches_pytorch_loss_gradients_and_sgd_step(seed):
    ds = data.load("digits", None, 0)
    side = ds.x_train.shape[1]
    cfg = tiny_config(
        model="seed_cnn", depth=1, width=6, activation="relu", norm="batchnorm", learning_rate=0.01, batch_size=64, seed=seed
    )
    x, y = ds.x_train[:64], ds.y_train[:64]

    prog, state = init_state(cfg, ds)
    params = nnx.to_pure_dict(state.params)
    net = seed_net(6 * (side - 2) ** 2)
    net.train()
    _copy_weights(params, net, side)
    sgd = torch.optim.SGD(net.parameters(), lr=0.01)

    # decay: one pure train step (the same function the sweep runs), its loss and gradients.
    grads, _, stats = grads_and_stats(prog.net, state.params, state.batch_stats, x, y)
    new_state, _ = train_step(prog.net, optim.build("sgd", 0.01), state, x, y)

    # PyTorch: the seed's loop body.
    sgd.zero_grad()
    loss = nn.CrossEntropyLoss()(net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), torch.from_numpy(y).long())
    loss.backward()
    torch_grads = {n: p.grad.numpy().copy() for n, p in net.named_parameters()}
    sgd.step()

    assert float(stats["loss"]) == pytest.approx(loss.item(), rel=1e-5)
    ours = _as_torch_layout(nnx.to_pure_dict(grads), side)
    assert ours.keys() == torch_grads.keys()
    for name, g in torch_grads.items():
        np.testing.assert_allclose(ours[name], g, rtol=2e-4, atol=2e-6, err_msg=name)
    after = _as_torch_layout(nnx.to_pure_dict(new_state.params), side)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(after[name], p.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    # The per-layer gradient norm decay reports is the norm of the same conv-kernel gradient.
    assert float(stats["grad_norms"][0]) == pytest.approx(float(np.linalg.norm(torch_grads["conv1.weight"])), rel=1e-4)
