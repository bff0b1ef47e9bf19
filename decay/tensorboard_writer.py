"""TensorBoard event files for one run (the only module that imports tensorboardX).

Per logged step one event carries every scalar of that step (`loss` and, per hidden layer,
`grad_norm/layer_XX`, `signal_norm/layer_XX`, `act_rms/layer_XX`, `update_ratio/layer_XX`,
`weight_norm/layer_XX`), built from arrays already on the host. With histograms on, each
layer adds `grad_log10_hist/layer_XX` (a histogram of log10 |dL/dW_l|) and the scalars
`grad_zero/`, `grad_nan/`, `grad_inf/layer_XX` (counts of entries outside the histogram).
Instruments (decay.instruments) add, per layer, `q/`, `c/`, `dead_fraction/`, `distance_from_init/`
(standard), `per_sample_grad_norm/`, `grad_snr/`, `b_simple/layer_XX` and the scalar
`b_simple/all_layers` (full), and at each curvature step `hessian/top_eigenvalue`, `hessian/trace`
and `hessian_trace/layer_XX`. A recurrent net's per-point values are per time step instead:
`signal_norm/t_XXX` (`signal_norm/l1_t_XXX` for layer 1 of a stack), `cell_signal_norm/t_XXX`
(lstm), `act_rms/t_XXX`, ...; its per-kernel values stay per layer.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

# tensorboardX's package imports PyTorch, where installed, only to recognize torch tensors, which
# this module never passes; hiding it saves ~1.1 s per process. Nothing is hidden once torch is loaded.
_hide_torch = "torch" not in sys.modules
if _hide_torch:
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
try:
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import HistogramProto, Summary
finally:
    if _hide_torch:
        del sys.modules["torch"]

from decay import histograms  # noqa: E402  (after the guarded tensorboardX import)

PER_LAYER = {
    "grad_norms": "grad_norm",
    "signal_norms": "signal_norm",
    "cell_signal_norms": "cell_signal_norm",
    "act_rms": "act_rms",
    "update_ratio": "update_ratio",
    "weight_norms": "weight_norm",
    # decay.instruments, standard and full tiers
    "q": "q",
    "c": "c",
    "dead_fraction": "dead_fraction",
    "c_tokens": "c_tokens",
    "distance": "distance_from_init",
    "per_sample_grad_norm": "per_sample_grad_norm",
    "grad_snr": "grad_snr",
    "b_simple_layers": "b_simple",
    "hessian_trace_layers": "hessian_trace",
}
SCALARS = {"loss": "loss", "b_simple": "b_simple/all_layers"}
PER_POINT = (
    "signal_norms",
    "cell_signal_norms",
    "act_rms",
    "q",
    "c",
    "dead_fraction",
    "c_tokens",
)  # the rest is per layer kernel


def time_tag(prefix: str, point: int, steps: int) -> str:
    """`prefix/t_XXX` of a recurrent net's point (layer-major over `steps` time steps); `prefix/lK_t_XXX` past layer 0."""
    layer, t = divmod(point, steps)
    return f"{prefix}/{f'l{layer}_' if layer else ''}t_{t:0{max(3, len(str(steps - 1)))}d}"


def layer_tag(prefix: str, layer: int, depth: int) -> str:
    """`prefix/layer_XX`, zero-padded to at least two digits (more for depth > 100)."""
    return f"{prefix}/layer_{layer:0{max(2, len(str(depth - 1)))}d}"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _scalar_prefix(tag: str) -> bytes:
    """Serialized `Summary.value` entry up to its float: field 1 {tag: field 1, simple_value: field 2}."""
    t = tag.encode()
    inner = b"\x0a" + _varint(len(t)) + t + b"\x15"  # + 4 bytes of float32
    return b"\x0a" + _varint(len(inner) + 4) + inner


class RunWriter:
    """Writes one run's scalars and histograms to `log_dir`."""

    def __init__(self, log_dir: str, depth: int, tags: dict[str, list[str]] | None = None, points: int = 0, time_steps: int = 0):
        """`tags` replaces the per-layer tags of some keys (a watched model's per-parameter entries); a recurrent net
        gives its `points` (layers x `time_steps`), which name its per-point keys by time step."""
        # tensorboardX's synchronous EventsWriter: SummaryWriter's asynchronous path pickles every
        # event through a multiprocessing queue, which costs more than the training step's statistics.
        self._path = os.path.join(log_dir, "events.out.tfevents.*")
        try:
            os.makedirs(log_dir, exist_ok=True)
            self._events = EventsWriter(os.path.join(log_dir, "events"))
        except OSError as e:
            raise _error(self._path, e) from None
        self._path = self._events._file_name
        self._depth = depth
        self._tags = {key: [layer_tag(name, l, depth) for l in range(depth)] for key, name in PER_LAYER.items()}
        if time_steps:
            self._tags.update({k: [time_tag(PER_LAYER[k], p, time_steps) for p in range(points)] for k in PER_POINT})
        self._tags.update(tags or {})
        self._prefixes: dict[str, list[bytes]] = {k: [_scalar_prefix(t) for t in v] for k, v in self._tags.items()}
        for key, tag in SCALARS.items():
            self._prefixes[key] = [_scalar_prefix(tag)]

    def write_steps(self, steps: np.ndarray, stats: dict[str, np.ndarray]) -> None:
        """Logs the per-step statistics `stats[key][i]` at global step `steps[i]`, one event per step.

        Scalars are serialized straight from the float32 arrays with precomputed tag bytes
        (the protobuf wire format of `Summary`), which keeps logging every step of a deep net cheap.
        """
        if len(steps) == 0:
            return
        keys = [k for k in self._prefixes if k in stats]
        prefixes = [p for k in keys for p in self._prefixes[k]]
        table = np.concatenate([np.asarray(stats[k], np.float32).reshape(len(steps), -1) for k in keys], axis=1)
        for i, step in enumerate(steps):
            raw = table[i].tobytes()
            blob = b"".join(p + raw[4 * j : 4 * j + 4] for j, p in enumerate(prefixes))
            summary = Summary.FromString(blob)
            if "grad_hist_counts" in stats:
                summary.value.extend(self._histogram_values(stats, i))
            self._write(summary, int(step))

    def _histogram_values(self, stats: dict[str, np.ndarray], i: int) -> list:
        values = []
        for layer in range(self._depth):
            for kind in ("zero", "nan", "inf"):
                tag = layer_tag(f"grad_{kind}", layer, self._depth)
                values.append(Summary.Value(tag=tag, simple_value=float(stats[f"grad_hist_{kind}"][i][layer])))
            counts = np.asarray(stats["grad_hist_counts"][i][layer], np.float64)
            s = histograms.summary_stats(counts)
            if s is None:
                continue
            hist = HistogramProto(
                min=s["min"],
                max=s["max"],
                num=s["num"],
                sum=s["sum"],
                sum_squares=s["sum_squares"],
                bucket_limit=histograms.EDGES[1:].tolist(),
                bucket=counts.tolist(),
            )
            values.append(Summary.Value(tag=layer_tag("grad_log10_hist", layer, self._depth), histo=hist))
        return values

    def write_scalars(self, step: int, values: dict[str, float]) -> None:
        """Logs named scalars (tag -> value) at `step`."""
        self._write(Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]), int(step))

    def write_eval(self, step: int, results: dict[str, tuple[float, float]]) -> None:
        """Logs `<split>_loss` and `<split>_accuracy` of every evaluated split at `step` (after that many updates)."""
        values = []
        for split, (loss, accuracy) in results.items():
            values.append(Summary.Value(tag=f"{split}_loss", simple_value=float(loss)))
            values.append(Summary.Value(tag=f"{split}_accuracy", simple_value=float(accuracy)))
        self._write(Summary(value=values), int(step))

    def _write(self, summary: Summary, step: int) -> None:
        try:
            self._events.write_event(Event(wall_time=time.time(), step=step, summary=summary))
        except OSError as e:
            raise _error(self._path, e) from None

    def flush(self) -> None:
        """Writes the buffered events to the file (with each checkpoint: a killed run loses no logged step before it)."""
        try:
            self._events.flush()
        except OSError as e:
            raise _error(self._path, e) from None

    def close(self) -> None:
        """Flushes and closes the event file."""
        try:
            self._events.flush()
            self._events.close()
        except OSError as e:
            raise _error(self._path, e) from None


def _error(path: str, e: OSError):
    """A failed write of an event file as the one-line `decay.errors.WriteError`."""
    from decay.results import write_error

    return write_error(path, e)
