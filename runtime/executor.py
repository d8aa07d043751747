"""Run a bundle: digital ops in NumPy, crossbar layers through their tiles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from xbar.hardware import HardwareSpec

import numpy as np

from xbar.bundle import Bundle
from xbar.data import as_feeds
from xbar.dims import fixed_batch
from xbar.errors import BundleError, DataError, XbarError
from xbar.ops import LAYER_OP, RECURRENT_OP
from xbar.runtime.chip import CHUNK_CELLS, load_circuit_code
from xbar.runtime.layer import Layer
from xbar.memory import keep_freed_memory
from xbar.runtime.ops import NUM_OUTPUTS, get_op
from xbar.runtime.recurrent import Recurrent
from xbar.runtime.parallel import as_done, blas_single_threaded, workers


def _decode_attrs(attrs: dict[str, Any], bundle: Bundle) -> dict[str, Any]:
    def dec(v: Any) -> Any:
        if isinstance(v, dict) and "$array" in v:
            return bundle.array(v["$array"])
        if isinstance(v, list):
            return [dec(x) for x in v]
        return v

    return {k: dec(v) for k, v in attrs.items()}


class Runtime:
    """Executable form of a bundle. `run` takes and returns dicts of named arrays."""

    def __init__(self, bundle: Bundle, hardware: "HardwareSpec | None" = None, seed: int = 0, progress=None):
        """`hardware` None runs the programmed weights exactly, row blocks fused into one product.
        Otherwise a chip instance is sampled from `seed` (the same seed is the same chip, bit
        for bit) and every analog layer runs tile by tile through DAC, crossbar and ADC.
        `progress` wraps the list of layers while they are built (sampling a chip of a big
        model takes a while): a progress bar."""
        keep_freed_memory()
        self.bundle = bundle
        self.hardware = hardware
        self.seed = seed
        graph = bundle.graph
        self.inputs = graph["inputs"]
        self.outputs = graph["outputs"]
        self.input_names = [i["name"] for i in self.inputs]
        # A graph with a fixed batch size runs in chunks of it; None: any batch runs whole.
        self.fixed_batch = fixed_batch(bundle.manifest.get("batch"))
        # A fixed-batch graph whose first output does not lead with that batch (a batch of 1
        # squeezed away): one call of one chunk returns the chunk's output without a chunk axis.
        lead = (self.outputs[0].get("shape") or [None])[:1] if self.outputs else [None]
        self.squeezes_batch = self.fixed_batch is not None and lead != [self.fixed_batch]
        self.output_names = [o["name"] for o in self.outputs]
        self.constants = {name: bundle.array(key) for name, key in graph["constants"].items()}
        # Independent, stable streams: chip sampling per layer, and read noise per layer, so
        # one layer's draws never shift another's when options change.
        self.layers = self._build_layers(bundle, hardware, seed, progress)
        self.steps: list[tuple[str, Any, list[str], list[str], dict[str, Any]]] = []
        for node in graph["nodes"]:
            if node["op"] == LAYER_OP:
                fn = self.layers[node["attrs"]["layer"]]
                self.steps.append((node["name"], fn, node["inputs"], node["outputs"], {}))
                continue
            if node["op"] == RECURRENT_OP:  # a digital loop over its crossbar layers
                fn = Recurrent(node["name"], _decode_attrs(node["attrs"], bundle), self.layers)
                self.steps.append((node["name"], fn, node["inputs"], node["outputs"], {}))
                continue
            op = get_op(node["op"])
            if op is None:
                raise BundleError(f"bundle node {node['name']!r} uses op {node['op']!r}, which this runtime cannot run")
            attrs = _decode_attrs(node["attrs"], bundle)
            attrs[NUM_OUTPUTS] = len(node["outputs"])
            self.steps.append((node["name"], op, node["inputs"], node["outputs"], attrs))
        # Free each intermediate right after its last use to bound peak memory.
        last_use: dict[str, int] = {}
        for i, (_, _, ins, _, _) in enumerate(self.steps):
            for name in ins:
                last_use[name] = i
        keep = set(self.output_names) | set(self.constants)
        self._release = [[n for n in set(ins) if last_use.get(n) == i and n not in keep] for i, (_, _, ins, _, _) in enumerate(self.steps)]

    @staticmethod
    def _build_layers(bundle: Bundle, hardware: "HardwareSpec | None", seed: int, progress) -> list[Layer]:
        entries = bundle.layers
        shared: dict[int, Any] = {}
        if hardware is not None:
            shape = next(((e["tiles"]["rows"], e["tiles"]["cols"]) for e in entries if e.get("tiles")), None)
            if shape is not None:
                load_circuit_code(hardware, *shape)
            if bundle.manifest.get("pool"):  # tiles layers share: sampled first, on every worker
                from xbar.runtime.packed import sample_shared

                shared = sample_shared(bundle, hardware, seed)

        def build(i: int) -> Layer:
            return Layer(entries[i], bundle, hardware,
                         np.random.default_rng([seed, 0, i]), np.random.default_rng([seed, 1, i]), shared.pop(i, None))

        if hardware is None:  # no chip to sample: cheap, in order
            order = ((i, build(i)) for i in range(len(entries)))
        else:
            # Sampling and solving a layer costs about the same per cell. One layer's float64
            # work arrays grow with its cells up to CHUNK_CELLS, so only layers up to
            # CHUNK_CELLS / workers are built side by side: together they hold no more than
            # one big layer built alone.
            def cells(e: dict[str, Any]) -> int:  # of the tiles the layer samples itself
                t = e.get("tiles") or {}
                own = (t.get("packing") or {}).get("physical_tiles", t.get("tiles_used", 0))
                return own * t.get("rows", 0) * t.get("cols", 0)

            order = as_done(build, [cells(e) for e in entries], alone_above=CHUNK_CELLS / workers())
        layers: list[Layer | None] = [None] * len(entries)
        bar = iter(progress(list(enumerate(entries)))) if progress else iter(())
        for i, layer in order:
            layers[i] = layer
            next(bar, None)  # the bar counts finished layers
        for _ in bar:  # let the bar close
            pass
        return layers  # type: ignore[return-value]

    def _check_inputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise DataError(f"missing model input(s) {missing}; the model takes {self.input_names}")
        out = {}
        for spec in self.inputs:
            x = np.asarray(feeds[spec["name"]])
            want = spec["shape"]
            if want is not None and self.fixed_batch is not None and x.ndim and want:
                if x.shape[0] % self.fixed_batch:
                    raise DataError(
                        f"input {spec['name']!r} has {x.shape[0]} samples, but the model fixes its batch at "
                        f"{self.fixed_batch} and runs in batches of that size; give a multiple of "
                        f"{self.fixed_batch} samples")
                want = [None] + list(want[1:])
            if want is not None:
                ok = x.ndim == len(want) and all(w is None or w == s for w, s in zip(want, x.shape))
                if not ok:
                    shown = ["N" if w is None else w for w in want]
                    raise DataError(
                        f"input {spec['name']!r} has shape {list(x.shape)}, but the model expects "
                        f"{shown} (N = any batch size)"
                    )
            dtype = np.dtype(spec["dtype"])
            out[spec["name"]] = x.astype(dtype, copy=False)
        return out

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        walk = self.walk(feeds)
        while True:
            try:
                next(walk)
            except StopIteration as done:
                return done.value

    def walk(self, feeds: Mapping[str, np.ndarray]):
        """Execute step by step, pausing before every layer: yields (layer, its input), or
        for a recurrent node (its Recurrent, its list of inputs).

        A caller may change the layer (e.g. re-fit its affine) before resuming; the
        generator's return value is the dict of outputs.
        """
        env: dict[str, np.ndarray] = dict(self.constants)
        inputs = self._check_inputs(feeds)
        env.update(inputs)
        # A batch that fills every worker keeps BLAS on one thread for the whole run: the
        # layers then run on chunk threads, and BLAS threads never sit spinning between them.
        batch = max((np.shape(v)[0] for v in inputs.values() if np.ndim(v)), default=1)
        with blas_single_threaded(batch >= 2 * workers()):
            if self.fixed_batch is not None and batch > self.fixed_batch:
                return (yield from self._fixed_steps(env, batch))
            yield from self._steps(env)
        return {name: env[name] for name in self.output_names}

    def _fixed_steps(self, env: dict[str, np.ndarray], batch: int):
        """A graph that fixes its batch size: digital ops run chunk by chunk of that size,
        while every analog layer, and every recurrent node whose chunks' arguments line up
        along its batch axis, gets the whole batch at once (its rows are independent), so a
        chip sees the same calls, and a caller of `walk` the same layer inputs, as with a
        symbolic batch."""
        size = self.fixed_batch
        fed = set(self.input_names)
        envs = [{k: (v[j:j + size] if k in fed else v) for k, v in env.items()} for j in range(0, batch, size)]
        for (name, fn, ins, outs, attrs), release in zip(self.steps, self._release):
            if isinstance(fn, Layer):
                parts = [e[ins[0]] for e in envs]
                joined, split = _join(fn, parts)
                yield fn, joined
                try:
                    result = fn(joined)
                except XbarError:
                    raise
                except (ValueError, IndexError) as exc:
                    raise DataError(f"node {name!r} failed on an input of shape {list(joined.shape)}: {exc}") from None
                for e, r in zip(envs, split(result)):
                    e[outs[0]] = r
            elif isinstance(fn, Recurrent) and (joined := _join_recurrent(fn, [[e[i] if i else None for i in ins]
                                                                             for e in envs])) is not None:
                args, split = joined
                yield fn, args
                for e, part in zip(envs, split(outs, self._call_step(name, fn, args, attrs))):
                    e.update(part)
            else:
                for e in envs:
                    self._run_step(name, fn, ins, outs, attrs, e)
            for e in envs:
                for n in release:
                    e.pop(n, None)
        for name, spec in zip(self.output_names, self.outputs):
            parts = [np.asarray(e[name]) for e in envs]
            declared = spec.get("shape")
            if parts[0].ndim and declared and declared[0] == size and all(p.shape[0] == size for p in parts):
                env[name] = np.concatenate(parts, axis=0)
            else:
                env[name] = np.stack(parts, axis=0)
        return {name: env[name] for name in self.output_names}

    def _run_step(self, name, fn, ins, outs, attrs, env) -> None:
        for o, r in zip(outs, self._call_step(name, fn, [env[i] if i else None for i in ins], attrs)):
            if o:
                env[o] = r

    @staticmethod
    def _call_step(name, fn, args, attrs) -> list:
        try:
            return [fn(args[0])] if isinstance(fn, Layer) else fn(args, attrs)
        except XbarError:
            raise
        except (ValueError, IndexError) as exc:
            raise DataError(f"node {name!r} failed on inputs of shape "
                            f"{[None if a is None else list(np.shape(a)) for a in args]}: {exc}") from None

    def _steps(self, env: dict[str, np.ndarray]):
        for (name, fn, ins, outs, attrs), release in zip(self.steps, self._release):
            args = [env[i] if i else None for i in ins]
            if isinstance(fn, Layer):
                yield fn, args[0]
            elif isinstance(fn, Recurrent):
                yield fn, args
            self._run_step(name, fn, ins, outs, attrs, env)
            for n in release:
                env.pop(n, None)

    def __call__(self, x: "np.ndarray | dict[str, np.ndarray]") -> np.ndarray:
        """First output for `x`: the first input's array, or {input name: array} for several."""
        return self.run(as_feeds(x, self.input_names))[self.output_names[0]]


def _join_recurrent(node: Recurrent, parts: list[list[np.ndarray | None]]):
    """A recurrent node's per-chunk arguments (X, sequence_lens, initial_h, initial_c) as
    one call's, joined along each one's batch axis (the node's layout says which), and how
    to split its outputs (Y, Y_h, Y_c) back into per-chunk dicts; None where the chunks'
    arguments differ in shape, and the node then runs chunk by chunk."""
    # Batch axis of each argument and of each output, in layout 0 ([seq, batch, …]) and 1.
    arg_axes, out_axes = ((1, 0, 1, 1), (2, 1, 1)) if node.layout == 0 else ((0, 0, 0, 0), (0, 0, 0))
    args: list[np.ndarray | None] = []
    for k, axis in enumerate(arg_axes):
        got = [None if k >= len(p) or p[k] is None else np.asarray(p[k]) for p in parts]
        if all(g is None for g in got):
            args.append(None)
            continue
        if any(g is None or g.ndim <= axis or g.shape != got[0].shape for g in got):
            return None
        args.append(np.concatenate(got, axis=axis))
    if args[0] is None:
        return None
    size = np.asarray(parts[0][0]).shape[arg_axes[0]]

    def split(outs: list[str], results: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        named = [(o, r, axis) for o, r, axis in zip(outs, results, out_axes) if o]
        return [{o: np.take(r, np.arange(j * size, (j + 1) * size), axis=axis) for o, r, axis in named}
                for j in range(len(parts))]

    return args, split


def _join(layer: Layer, parts: list[np.ndarray]):
    """The per-chunk inputs of a layer as one array, and how to split its output back.

    Rows of a Conv/Gemm/right MatMul input are independent samples (axis 0; axis 1 of a
    transposed Gemm input); a left MatMul (W @ x) works on the last two axes, so a 2-D
    input joins along its columns. A 1-D input gets a new axis first."""
    x = parts[0]
    left = layer.kind == "matmul" and layer.params.get("side") == "left"
    if x.ndim == 1:
        axis = -1 if left else 0
        joined = np.stack(parts, axis=axis)
        return joined, lambda y: [np.take(y, j, axis=axis) for j in range(len(parts))]
    if layer.kind == "gemm" and layer.params.get("transA"):
        in_axis, out_axis = 1, 0
    elif left and x.ndim == 2:
        in_axis = out_axis = -1
    else:
        in_axis = out_axis = 0
    sizes = [p.shape[in_axis] for p in parts]
    cuts = np.cumsum(sizes)[:-1]
    return np.concatenate(parts, axis=in_axis), lambda y: np.split(y, cuts, axis=out_axis)
