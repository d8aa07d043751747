"""The sweep spec: a TOML file naming models, data, shared settings and the axes of a study.

    [study]                                  # what every point shares and how rows are made
    models = ["../models/resnet_bn.onnx"]    # paths relative to this file; or {name = path, ...}
    test_data = "../models/digits_test.npz"
    calib_data = "../models/digits_calib.npz"  # DAC/ADC ranges and on-chip calibration
    seeds = "0-4"                            # chip instances: one row per chip and time
    times = ["1s", "1d", "1y"]

    [base]                                   # settings of every point
    hardware = "pcm"                         # a preset or a TOML file
    "mapping.crossbar" = "128x128"

    [axes]                                   # their cartesian product is the study ...
    "hardware.adc.bits" = [6, 8]

    [[points]]                               # ... times an explicit list of points, if given
    "hardware.drift_compensation" = "tile"

A point is base ⊕ one [[points]] entry ⊕ one combination of the axes. Every setting a
point can carry is listed in FIELDS_TEXT; nested tables are read as dotted keys, so
`hardware.adc.bits = 8` and `"hardware.adc.bits" = 8` are the same setting. [base] and
[[points]] may also set `seeds` and `times`, replacing the study's for those points (e.g. a
fine-tune for 1 d evaluated at 1 d only).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xbar.errors import ConfigError
from xbar.units import format_seeds, format_time

#: Keys of [study].
STUDY_KEYS = ("models", "test_data", "calib_data", "train_data", "seeds", "times", "batch_size", "snr_samples",
              "test_samples")
#: convert() keyword arguments a point may set as mapping.<name>.
MAPPING_KEYS = ("crossbar", "encoding", "weight_bits", "digital", "weight_clip_percentile", "afp_exponents",
                "afp_step", "bit_slices", "bits_per_cell", "replicas", "rearrange", "rearrange_rows", "depthwise",
                "pack_tiles", "g_min", "g_max")
CALIBRATION_KEYS = ("method", "chip", "time", "epochs", "lr", "loss")
_OFFSET = re.compile(r"^seed\s*([+-])\s*(\d+)$")
FINETUNE_KEYS = ("method", "time", "epochs", "lr", "loss", "seed")
CALIBRATION_METHODS = ("none", "stats", "affine", "sgd")
FINETUNE_METHODS = ("none", "noise", "hessian")
FIELDS_TEXT = ("seeds and times (in [base] and [[points]]); model; hardware (a preset or TOML file); hardware.<section>.<key> and "
               "hardware.drift_compensation (as for --set); hardware.without / hardware.only (as for --without / "
               "--only); mapping.{" + ", ".join(MAPPING_KEYS) + "}; ranges (true/false: measure DAC/ADC ranges on "
               "calib_data); calibration.{" + ", ".join(CALIBRATION_KEYS) + "}; finetune.{"
               + ", ".join(FINETUNE_KEYS) + "}")


class SpecError(ConfigError):
    """A sweep spec that cannot run as written."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(obj: Any) -> str:
    """Content hash of a JSON-able object (sorted keys): equal settings, equal digest."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class Point:
    """One configuration of the study, resolved: everything a task needs except the chip seed."""

    index: int
    fields: dict[str, Any]  # the settings as the spec gives them (base ⊕ point ⊕ axes): the row columns
    model: str
    model_path: Path
    model_sha256: str
    mapping: dict[str, Any]  # convert() keyword arguments
    hardware: dict[str, Any]  # HardwareSpec.to_dict() before the time is set
    ranges: bool
    calibration: dict[str, Any]
    finetune: dict[str, Any]
    seeds: list[int]
    times: list[float]
    label: str = ""

    def prepare_key(self, study: "Study") -> str:
        """What the prepared bundle depends on: model, mapping, target, ranges and fine-tune data."""
        return digest({"model": self.model_sha256, "mapping": self.mapping, "hardware": self.hardware,
                       "ranges": self.ranges and study.calib_sha256, "finetune": self.finetune,
                       "train": study.train_sha256 if self.finetune["method"] != "none" else None})

    def identity(self) -> dict[str, Any]:
        """What the point's results depend on: its resolved settings with the model by content,
        not by where it lies (a clone elsewhere resumes the same results folder)."""
        return {k: v for k, v in self.resolved().items() if k != "model_path"}

    def resolved(self) -> dict[str, Any]:
        """The full configuration of the point (rows carry it as JSON)."""
        return {"model": self.model, "model_path": str(self.model_path), "model_sha256": self.model_sha256,
                "mapping": self.mapping, "hardware": self.hardware, "ranges": self.ranges,
                "calibration": self.calibration, "finetune": self.finetune, "seeds": self.seeds,
                "times": self.times}


@dataclass
class Study:
    path: Path
    text: str
    models: dict[str, Path]
    test_data: Path
    calib_data: Path | None
    train_data: Path | None
    seeds: list[int]
    times: list[float]
    batch_size: int
    snr_samples: int
    test_samples: int | None
    points: list[Point] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # the setting names rows carry, in spec order
    test_sha256: str = ""
    calib_sha256: str | None = None
    train_sha256: str | None = None
    _keys: dict[tuple[int, int], str] = field(default_factory=dict, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    def task_key(self, point: Point, seed: int) -> str:
        """A (point, chip) task's identity: its result depends on nothing else. Memoised: the
        engine and the store ask for every key many times, and a study is fixed once loaded."""
        from xbar import __version__

        cached = self._keys.get((point.index, seed))
        if cached is not None:
            return cached
        key = self._keys[(point.index, seed)] = digest({"point": point.identity(), "prepare": point.prepare_key(self), "seed": seed,
                       "times": point.times, "test": self.test_sha256, "calib": self.calib_sha256,
                       "batch": self.batch_size, "snr": self.snr_samples, "n": self.test_samples,
                       "xbar": __version__})
        return key

    def fingerprint(self) -> str:
        """The whole study's identity: a results folder holds the rows of one fingerprint."""
        if self._fingerprint is None:
            self._fingerprint = digest(sorted(self.task_key(p, s) for p in self.points for s in p.seeds))
        return self._fingerprint

    @property
    def rows(self) -> int:
        return sum(len(p.seeds) * len(p.times) for p in self.points)


def _flatten(table: Any, where: str, prefix: str = "") -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SpecError(f"{where} must be a table of settings, got {type(table).__name__}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, where, name + "."))
        else:
            out[name] = value
    if "hardware.preset" in out:  # lets unquoted dotted keys (hardware.adc.bits = 8) sit beside the preset
        if "hardware" in out:
            raise SpecError(f"{where} gives both 'hardware' and 'hardware.preset'; keep one")
        out["hardware"] = out.pop("hardware.preset")
    return out


def _check_name(name: str, where: str) -> None:
    head, _, rest = name.partition(".")
    ok = (name in ("model", "hardware", "ranges", "hardware.without", "hardware.only", "hardware.drift_compensation")
          or (head == "hardware" and rest.count(".") == 1)
          or (head == "mapping" and rest in MAPPING_KEYS)
          or (head == "calibration" and rest in CALIBRATION_KEYS)
          or (head == "finetune" and rest in FINETUNE_KEYS))
    if name in ("seeds", "times"):
        if "[axes]" in where:
            raise SpecError(f"{where}: {name!r} cannot be an axis (every point gets all of them); set it in [base] or "
                            "in a [[points]] entry")
        return
    if name == "hardware.t_inference":
        raise SpecError(f"{where}: 'hardware.t_inference' is not a setting here: the drift times are [study] times, "
                        "one row each")
    if not ok:
        raise SpecError(f"{where}: unknown setting {name!r}. A point can set: {FIELDS_TEXT}")


def _relative(base: Path, value: Any, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{what} must be a file path (a string), got {value!r}")
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def _existing(base: Path, value: Any, what: str) -> Path:
    p = _relative(base, value, what)
    if not p.is_file():
        raise SpecError(f"{what} {value!r}: no such file ({p}); paths are relative to the spec's folder")
    return p


def _seeds(value: Any, where: str) -> list[int]:
    from xbar.units import parse_seeds

    try:
        return parse_seeds(",".join(map(str, value)) if isinstance(value, list) else value)
    except ConfigError as exc:
        raise SpecError(f"{where} {exc}") from None


def _times(value: Any, where: str) -> list[float]:
    from xbar.units import parse_time

    try:
        times = [parse_time(t) for t in (value if isinstance(value, list) else [value])]
    except ConfigError as exc:
        raise SpecError(f"{where} {exc}") from None
    if not times:
        raise SpecError(f"{where} times is empty")
    if len(set(times)) != len(times):
        raise SpecError(f"{where} times repeat a time")
    return times


def load_study(path: str | Path) -> Study:
    """Read, check and expand a spec. Every error names the spec, the point and the setting."""
    from xbar.hardware import _tomllib

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such sweep spec (a TOML file; see examples/sweep.toml)")
    tomllib = _tomllib()
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"study", "base", "axes", "points"})
    if unknown:
        raise SpecError(f"{path}: unknown table(s) {', '.join(map(repr, unknown))}; a spec has [study], [base], "
                        "[axes] and [[points]]")
    here = path.resolve().parent
    st = data.get("study")
    if not isinstance(st, dict):
        raise SpecError(f"{path}: no [study] table; it names models, test_data, seeds and times")
    bad = sorted(set(st) - set(STUDY_KEYS))
    if bad:
        raise SpecError(f"{path}: unknown [study] key(s) {', '.join(map(repr, bad))}; valid: {', '.join(STUDY_KEYS)}")
    for key in ("models", "test_data", "seeds", "times"):
        if key not in st:
            raise SpecError(f"{path}: [study] needs {key!r}")

    raw_models = st["models"]
    if isinstance(raw_models, str):
        raw_models = [raw_models]
    if isinstance(raw_models, list):
        models = {}
        for m in raw_models:
            p = _existing(here, m, f"{path}: model")
            if p.stem in models:
                raise SpecError(f"{path}: two models are named {p.stem!r}; give them as a table {{name = path}}")
            models[p.stem] = p
    elif isinstance(raw_models, dict):
        models = {str(k): _existing(here, v, f"{path}: model {k!r}") for k, v in raw_models.items()}
    else:
        raise SpecError(f"{path}: [study] models must be a list of paths or a table {{name = path}}")
    if not models:
        raise SpecError(f"{path}: [study] models is empty")

    def data_file(key: str) -> Path | None:
        return _existing(here, st[key], f"{path}: [study] {key}") if key in st else None

    seeds = _seeds(st["seeds"], f"{path}: [study]")
    times = _times(st["times"], f"{path}: [study]")

    def count(key: str, default: int | None, low: int) -> int | None:
        v = st.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
            raise SpecError(f"{path}: [study] {key} must be a whole number ≥ {low}, got {v!r}")
        return int(v)

    study = Study(path=path, text=text, models=models, test_data=data_file("test_data"),
                  calib_data=data_file("calib_data"), train_data=data_file("train_data"), seeds=seeds, times=times,
                  batch_size=count("batch_size", 128, 1), snr_samples=count("snr_samples", 0, 0),
                  test_samples=count("test_samples", None, 1))
    study.test_sha256 = _sha256_file(study.test_data)
    study.calib_sha256 = _sha256_file(study.calib_data) if study.calib_data else None
    study.train_sha256 = _sha256_file(study.train_data) if study.train_data else None

    base = _flatten(data.get("base", {}), f"{path} [base]")
    axes = _flatten(data.get("axes", {}), f"{path} [axes]")
    raw_points = data.get("points", [{}])
    if not isinstance(raw_points, list) or not raw_points:
        raise SpecError(f"{path}: [[points]] must be an array of tables, each one point's settings")
    points_in = [_flatten(p, f"{path} [[points]] #{i + 1}") for i, p in enumerate(raw_points)]
    for name in base:
        _check_name(name, f"{path} [base]")
    for name, values in axes.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{path} [axes] {name!r}: an axis is a non-empty list of values, got {values!r}")
        if any(isinstance(v, dict) for v in values):
            # A compound axis: each value is a table of settings under the axis's name, moving
            # together (calibration = [{method = "none"}, {method = "sgd", epochs = 5}]).
            if not all(isinstance(v, dict) and v for v in values):
                raise SpecError(f"{path} [axes] {name!r}: either every value is a table of settings or none is")
            values[:] = [_flatten(v, f"{path} [axes] {name!r}", name + ".") for v in values]
            for v in values:
                for key in v:
                    _check_name(key, f"{path} [axes] {name!r}")
        else:
            _check_name(name, f"{path} [axes]")
    axis_keys = {k for n, vs in axes.items() for k in ({k for v in vs for k in v} if isinstance(vs[0], dict) else {n})}
    if both := sorted(axis_keys & set(base)):
        name = both[0]
        raise SpecError(f"{path}: {name!r} is set in [base] and swept in [axes]; the axis overrides it at every "
                        "point, so the [base] value would never run: drop it from [base]")
    for i, p in enumerate(points_in):
        for name in p:
            _check_name(name, f"{path} [[points]] #{i + 1}")
            if name in axis_keys:
                raise SpecError(f"{path}: {name!r} is both an axis and set by [[points]] #{i + 1}; a setting is one "
                                "or the other")
    if "model" not in axes and "model" not in base and not any("model" in p for p in points_in):
        if len(models) == 1:
            base["model"] = next(iter(models))
        else:
            axes = {"model": list(models), **axes}

    names = list(axes)
    combos = [{k: v for n, value in zip(names, values)
               for k, v in (value.items() if isinstance(value, dict) else [(n, value)])}
              for values in itertools.product(*(axes[n] for n in names))]
    seen: dict[str, int] = {}
    order: list[str] = []
    for i, p in enumerate(points_in):
        for combo in combos:
            fields = {**base, **p, **combo}
            for k in fields:
                if k not in order and k not in ("seeds", "times"):  # rows carry seed and time themselves
                    order.append(k)
            own = ", ".join(f"{k}={v!r}" for k, v in {**p, **combo}.items())
            where = f"{path} point {len(study.points) + 1}" + (f" ({own})" if own else "")
            point = _resolve(study, len(study.points), fields, where)
            key = digest(point.identity())
            if key in seen:
                raise SpecError(f"{where} is the same configuration as point {seen[key] + 1}; every point must differ")
            seen[key] = point.index
            study.points.append(point)
    study.columns = order
    varying = [k for k in order if len({json.dumps(p.fields.get(k), sort_keys=True) for p in study.points}) > 1]
    for p in study.points:
        # The swept settings this point sets (one that only other points set is left out).
        p.label = ", ".join(f"{k}={_show(p.fields[k])}" for k in varying if p.fields.get(k) is not None) or p.model
        if len({json.dumps(q.seeds) for q in study.points}) > 1:
            p.label += f" [chips {format_seeds(p.seeds)}]"
        if len({json.dumps(q.times) for q in study.points}) > 1:
            p.label += f" [t {', '.join(format_time(t) for t in p.times)}]"
    return study



def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _resolve(study: Study, index: int, fields: dict[str, Any], where: str) -> Point:
    from xbar.config import parse_crossbar
    from xbar.hardware import PRESETS, HardwareSpec, ablate, preset
    from xbar.units import parse_time

    seeds = _seeds(fields.pop("seeds"), f"{where}: seeds") if "seeds" in fields else study.seeds
    times = _times(fields.pop("times"), f"{where}:") if "times" in fields else study.times
    name = fields.get("model", next(iter(study.models)) if len(study.models) == 1 else None)
    if name not in study.models:
        raise SpecError(f"{where}: model {name!r} is not one of [study] models ({', '.join(study.models)})")
    model_path = study.models[name]

    hw = fields.get("hardware", "ideal")
    try:
        if hw in PRESETS:
            spec = preset(hw)
        else:
            toml = _relative(study.path.resolve().parent, hw, f"{where}: hardware")
            if not toml.is_file():
                raise SpecError(f"{where}: hardware {hw!r} is neither a preset ({', '.join(PRESETS)}) nor a file "
                                f"({toml}; paths are relative to the spec's folder)")
            spec = HardwareSpec.from_toml(toml)
        sets = {k[len("hardware."):]: v for k, v in fields.items()
                if k.startswith("hardware.") and k not in ("hardware.without", "hardware.only")}
        if sets:
            spec = spec.override(sets)
        only, without = fields.get("hardware.only"), fields.get("hardware.without")
        if only is not None or without is not None:
            spec = ablate(spec, only, without, set_keys=sets)
    except SpecError:
        raise
    except ConfigError as exc:
        raise SpecError(f"{where}: {exc}") from None

    mapping = {k[len("mapping."):]: v for k, v in fields.items() if k.startswith("mapping.")}
    try:
        if "crossbar" in mapping:
            mapping["crossbar"] = list(parse_crossbar(str(mapping["crossbar"])))
        if isinstance(mapping.get("digital"), str):
            mapping["digital"] = [s.strip() for s in mapping["digital"].split(",") if s.strip()]
        _check_mapping(mapping, spec)
    except (ConfigError, TypeError, ValueError) as exc:
        raise SpecError(f"{where}: mapping: {exc}") from None

    ranges = fields.get("ranges", study.calib_data is not None and not spec.is_ideal)
    if not isinstance(ranges, bool):
        raise SpecError(f"{where}: ranges must be true or false, got {ranges!r}")
    if ranges and study.calib_data is None:
        raise SpecError(f"{where}: ranges = true measures DAC/ADC ranges on [study] calib_data, which is not given")

    cal, method = _section(fields, "calibration", CALIBRATION_METHODS, where, study.calib_data, "calib_data", spec)
    if method == "none":
        calibration: dict[str, Any] = {"method": "none"}
    else:
        chip = cal.get("chip", "same")
        offset = _OFFSET.match(chip.replace(" ", "")) if isinstance(chip, str) else None
        if offset:
            chip = f"seed{offset.group(1)}{int(offset.group(2))}"
            if any(calibration_chip(chip, s) < 0 for s in seeds):
                raise SpecError(f"{where}: calibration.chip {chip!r} gives a negative seed for one of the chips")
        elif not (chip == "same" or (isinstance(chip, numbers.Integral) and not isinstance(chip, bool) and chip >= 0)):
            raise SpecError(f"{where}: calibration.chip must be 'same' (each chip calibrated on itself), a seed (one "
                            "chip's calibration used on every chip) or 'seed+N' / 'seed-N' (each chip gets the "
                            f"calibration of another chip, N seeds away), got {chip!r}")
        at = cal.get("time", "same")
        try:
            at = at if at == "same" else parse_time(at)
        except ConfigError as exc:
            raise SpecError(f"{where}: calibration.time: {exc} (or 'same': at each evaluated time)") from None
        calibration = {"method": method, "chip": chip, "time": at}
        if method == "sgd":
            from xbar.training.sgd import SGDOptions

            d = SGDOptions()
            calibration.update(epochs=cal.get("epochs", d.epochs), lr=cal.get("lr", d.lr), loss=cal.get("loss", d.loss))
        else:
            extra = sorted(set(cal) & {"epochs", "lr", "loss"})
            if extra:
                raise SpecError(f"{where}: calibration.{extra[0]} applies to method 'sgd' only (this point: {method!r})")

    ft, fmethod = _section(fields, "finetune", FINETUNE_METHODS, where, study.train_data, "train_data", spec)
    if fmethod == "none":
        finetune: dict[str, Any] = {"method": "none"}
    else:
        if "time" not in ft:
            raise SpecError(f"{where}: finetune.time is required: the time after programming to train for (e.g. "
                            "'1y'); the noise a weight sees grows with time")
        from xbar.training.finetune import FinetuneOptions

        d = FinetuneOptions()
        try:
            ft_time = parse_time(ft["time"])
        except ConfigError as exc:
            raise SpecError(f"{where}: finetune.time: {exc}") from None
        finetune = {"method": fmethod, "time": ft_time, "epochs": ft.get("epochs", d.epochs),
                    "lr": ft.get("lr", d.lr), "loss": ft.get("loss", d.loss), "seed": ft.get("seed", 0)}
    training = [what for what, on in (("calibration.method 'sgd'", calibration.get("method") == "sgd"),
                                      (f"finetune.method {fmethod!r}", fmethod != "none")) if on]
    if training:
        recurrent, inputs = _training_obstacles(model_path)
        if recurrent:
            op, node = recurrent[0]
            raise SpecError(f"{where}: {training[0]} trains through the torch executor, which has no torch form for "
                            f"{op} (node {node!r} of model {name!r}, {len(recurrent)} recurrent node(s)). Recurrent "
                            "models run evaluation and the closed-form calibration methods ('stats', 'affine'); drop "
                            "the training for this model.")
        if len(inputs) > 1:
            raise SpecError(f"{where}: {training[0]}: the training side runs models with one input, and model "
                            f"{name!r} takes {len(inputs)} ({', '.join(inputs)}). Evaluation and the closed-form "
                            "calibration methods ('stats', 'affine') run it; drop the training for this model.")
    return Point(index=index, fields=fields, model=name, model_path=model_path,
                 model_sha256=_sha256_file(model_path), mapping=mapping,
                 hardware={k: v for k, v in spec.to_dict().items() if k != "t_inference"}, ranges=ranges,
                 calibration=calibration, finetune=finetune, seeds=seeds, times=times)


@functools.lru_cache(maxsize=None)
def _training_obstacles(model_path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """What the training side cannot run in a model (read without external weights): its
    recurrent nodes as (op, node name) (xbar.training.torch_ops.missing_ops) and its graph
    inputs (one is all it takes)."""
    import onnx

    from xbar.ops import RECURRENT_OPS

    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return ([(n.op_type, n.name) for n in graph.node if n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx")],
            [i.name for i in graph.input if i.name not in weights])


def _section(fields: dict[str, Any], name: str, methods: tuple[str, ...], where: str, data: Path | None,
             data_key: str, spec: Any) -> tuple[dict[str, Any], str]:
    """A point's `name.*` settings and its method. Method 'none' takes no other setting; any
    other method needs its data file and a hardware with something to correct or train for."""
    values = {k[len(name) + 1:]: v for k, v in fields.items() if k.startswith(name + ".")}
    method = values.get("method", "none")
    if method not in methods:
        raise SpecError(f"{where}: {name}.method {method!r}; choose one of {', '.join(methods)}")
    extra = sorted(set(values) - {"method"})
    if method == "none" and extra:
        raise SpecError(f"{where}: {name}.{extra[0]} is set but {name}.method is 'none'")
    if method != "none" and data is None:
        raise SpecError(f"{where}: {name}.method {method!r} needs [study] {data_key}, which is not given")
    if method != "none" and spec.is_ideal:
        raise SpecError(f"{where}: {name} against ideal hardware has nothing to correct or train for; give a "
                        "hardware preset or TOML")
    return values, method


def calibration_chip(chip: Any, seed: int) -> int:
    """The chip whose calibration chip `seed` runs with: calibration.chip resolved."""
    if chip == "same":
        return seed
    if isinstance(chip, str):
        m = _OFFSET.match(chip)
        return seed + (1 if m.group(1) == "+" else -1) * int(m.group(2))
    return int(chip)


def _check_mapping(mapping: dict[str, Any], spec: Any) -> None:
    """The cheap checks convert() makes before reading the model, so that a bad value fails
    before any work rather than in a worker."""
    import inspect

    from xbar.converter.convert import DEPTHWISE_POLICIES, convert
    from xbar.config import MappingConfig

    defaults = {k: p.default for k, p in inspect.signature(convert).parameters.items()
                if p.default is not inspect.Parameter.empty}
    m = {k: mapping.get(k, defaults[k]) for k in MAPPING_KEYS}
    if m["depthwise"] not in DEPTHWISE_POLICIES:
        raise ConfigError(f"depthwise must be one of {', '.join(DEPTHWISE_POLICIES)}; got {m['depthwise']!r}")
    if not isinstance(m["pack_tiles"], bool):
        raise ConfigError(f"pack_tiles must be true or false; got {m['pack_tiles']!r}")
    if m["pack_tiles"] and m["encoding"] != "differential":
        raise ConfigError("pack_tiles needs the differential encoding")
    window = {"g_min": m["g_min"] if m["g_min"] is not None else spec.device.g_min,
              "g_max": m["g_max"] if m["g_max"] is not None else spec.device.g_max}
    MappingConfig(rows=int(m["crossbar"][0]), cols=int(m["crossbar"][1]), encoding=m["encoding"],
                  weight_bits=m["weight_bits"], weight_clip_percentile=m["weight_clip_percentile"],
                  afp_exponents=m["afp_exponents"], afp_step=m["afp_step"], bit_slices=m["bit_slices"],
                  bits_per_cell=m["bits_per_cell"], replicas=m["replicas"], rearrange=m["rearrange"],
                  rearrange_rows=m["rearrange_rows"], **window)
