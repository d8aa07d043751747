"""Map new float weights (e.g. fine-tuned) onto a bundle exactly as the bundle was mapped.

`remap` is the bundle side of `xbar finetune`: given effective float weights for some
layers (the K×N matrix in the layer's weight order, i.e. what `Layer.matrix * col_scale`
of the runtime gives) and optionally new per-output affines, it writes a new bundle whose
analog layers go through the converter's own per-layer mapping (`_layer_arrays`, hence
`map_weights`) with the mapping configuration and the hardware target recorded in the
bundle. The result is what converting the equivalently modified ONNX model with the same
options gives, with the tile grid of the input: a layer whose new weights would need other
tiles is refused, since a deployment that was planned for a chip (tiles, ADCs) must stay
on it.

What the input's history means for the output:
- measured ranges (DAC input range, ADC full scales; `convert --calib-data`, or added by
  `calibrate`) describe activations of the old weights, so they are measured again on the
  calibration data the caller gives, at the percentiles they were measured at; without data
  the call is refused;
- calibration records (and the source affines a calibration kept) describe the old network
  on one chip: they are dropped, layers whose affines the caller does not replace get their
  affines as converted back (not one chip's fit), and the new manifest's `finetune` record
  says so, next to whatever the caller records there (method, epochs, data).

With a weight-clip percentile the per-column scale is re-measured from the new weights,
as converting them would do; the bundle's own (already clipped) weights then clip at a
slightly different scale, so they do not round-trip exactly (see tests/test_remap.py).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np

from xbar.affine import FIELDS as AFFINE_FIELDS, Affine
from xbar.bundle import Bundle, layer_tiles
from xbar.config import MappingConfig
from xbar.converter.convert import _layer_arrays, adc_per_vector, is_depthwise, share_tiles, tile_totals
from xbar.converter.layers import LayerSpec, conv_structure
from xbar.errors import ConfigError, DataError, ModelError
from xbar.source_affines import source_network

#: Tile-table fields that must not change: the grid and what is allocated on it.
GRID_FIELDS = ("rows", "cols", "n_row_blocks", "n_col_blocks", "tiles_used")


def remap(bundle: Bundle, weights: Mapping[str, np.ndarray] | None = None,
          affines: Mapping[str, Affine] | None = None, *, calib_x: np.ndarray | None = None,
          record: Mapping[str, Any] | None = None) -> Bundle:
    """A new bundle: `bundle` with `weights` {layer: K×N effective float weights} mapped
    again and `affines` {layer: Affine} replacing the per-output affines. `calib_x` (the
    model's input samples) is required when the bundle has measured ranges. `record` is
    stored as the manifest's `finetune` record. The input bundle is not modified."""
    weights = dict(weights or {})
    affines = dict(affines or {})
    # Calibration records and the chip-fitted affines describe the old network on one chip:
    # the new one starts from the affines as converted (unless `affines` replaces them).
    dropped = len(bundle.manifest.get("calibration") or [])
    bundle = source_network(bundle)
    layers = bundle.layers
    by_name = {e["name"]: i for i, e in enumerate(layers)}
    unknown = [n for n in (*weights, *affines) if n not in by_name]
    if unknown:
        raise ConfigError(f"no layer named {', '.join(map(repr, dict.fromkeys(unknown)))} in the bundle; its layers "
                          f"are: {', '.join(e['name'] for e in layers) or '(none)'}")
    ranged = any("ranges" in e for e in layers)
    if ranged and calib_x is None:
        raise ConfigError("the bundle has measured DAC/ADC ranges (converted with --calib-data, or calibrated), and "
                          "new weights change the activations they were measured on: give calibration data "
                          "(model inputs) to measure them again. Nothing was written.")
    cfg = MappingConfig.from_dict(bundle.manifest["mapping"])
    hardware = _mapping_target(bundle, cfg)
    checked = {name: _checked_weight(layers[by_name[name]], w) for name, w in weights.items()}
    for name, aff in affines.items():
        _check_affine(layers[by_name[name]], aff)

    manifest = copy.deepcopy(bundle.manifest)
    arrays = dict(bundle.arrays)  # arrays are replaced, never written into
    out_layers = manifest["layers"]
    # Shared tiles (--pack-tiles, format 6): every layer goes back to its logical tiles, and
    # the network's tiles are shared again once the new weights are mapped.
    live, routed = _unshare(bundle, out_layers, arrays, cfg) if "pool" in manifest else (None, set())
    for name in dict.fromkeys((*checked, *affines)):
        idx = by_name[name]
        entry = out_layers[idx]
        aff = affines.get(name) or _read_affine(bundle, entry)
        if name in checked:
            _map_layer(idx, entry, checked[name], aff, cfg, hardware, arrays, live, idx in routed)
        else:
            for field in AFFINE_FIELDS:
                arrays[entry["arrays"][field]] = np.asarray(getattr(aff, field), dtype=np.float32)
        entry["affine"]["eps"] = float(aff.eps)

    if live is not None:
        manifest["pool"] = share_tiles(out_layers, arrays, live, routed, cfg)
        _same_sharing(bundle, manifest, arrays, live)
    analog = [e for e in out_layers if e["placement"] == "analog"]
    manifest["summary"].update(tile_totals(analog, manifest.get("pool")))
    manifest.pop("arrays", None)  # the checksum index: save_bundle writes it for the new arrays
    out = Bundle(manifest=manifest, arrays=arrays)
    ranges = None
    if ranged:
        ranges = _remeasure_ranges(out, bundle, calib_x, hardware)
    manifest["finetune"] = {
        **dict(record or {}),
        "remapped_layers": list(checked),
        "affines_replaced": list(affines),
        "calibration_dropped": dropped,
        "ranges": ranges,
    }
    return out


def _mapping_target(bundle: Bundle, cfg: MappingConfig):
    """The hardware the bundle was mapped for (analog floating point weighs its noise,
    placement its wires), as `xbar convert` records it."""
    stored = bundle.manifest.get("hardware")
    if stored is None:
        if cfg.rearrange != "none" or cfg.rearrange_rows != "none":
            raise ConfigError("the bundle places columns or rows for a circuit but records no hardware target, "
                              "so it cannot be mapped the same way again; convert it with --hardware")
        return None
    from xbar.hardware import HardwareSpec

    return HardwareSpec.from_dict(stored)


def _checked_weight(entry: dict[str, Any], weight: np.ndarray) -> np.ndarray:
    name, k, n = entry["name"], entry["K"], entry["N"]
    w = np.asarray(weight)
    if w.shape != (k, n):
        raise DataError(f"layer {name!r}: new weights have shape {list(w.shape)}, expected [{k}, {n}] "
                        "(K inputs × N outputs, the layer's weight order)")
    if not np.issubdtype(w.dtype, np.floating) or not np.all(np.isfinite(w)):
        raise DataError(f"layer {name!r}: new weights must be finite floats; got dtype {w.dtype}"
                        + (f" with {int(np.sum(~np.isfinite(w)))} non-finite values"
                           if np.issubdtype(w.dtype, np.floating) else ""))
    structure = conv_structure(entry["params"], n) if entry["kind"] == "conv" else None
    if structure is not None and np.any(w[~structure]):
        raise DataError(f"layer {name!r} is a grouped convolution (group {entry['params']['group']}): "
                        f"{int(np.count_nonzero(w[~structure]))} new weights lie outside its groups, where the "
                        "network has structural zeros; keep them at 0 (mask their gradients)")
    return w.astype(np.float64)


def _check_affine(entry: dict[str, Any], aff: Affine) -> None:
    n = entry["N"]
    for field in AFFINE_FIELDS:
        v = np.asarray(getattr(aff, field))
        if v.shape != (n,) or not np.all(np.isfinite(v)):
            raise DataError(f"layer {entry['name']!r}: affine {field} must be {n} finite values; got shape "
                            f"{list(v.shape)}")
    if np.any(np.asarray(aff.var, np.float64) + aff.eps <= 0):
        raise DataError(f"layer {entry['name']!r}: affine var + eps must be positive")


def _read_affine(bundle: Bundle, entry: dict[str, Any]) -> Affine:
    keys = entry["arrays"]
    return Affine(*(bundle.array(keys[f]).astype(np.float64) for f in AFFINE_FIELDS), float(entry["affine"]["eps"]))


def _unshare(bundle: Bundle, layers: list[dict[str, Any]], arrays: dict[str, np.ndarray],
             cfg: MappingConfig) -> tuple[dict[int, np.ndarray], set[int]]:
    """A bundle whose layers share tiles, back to what the converter had before sharing them:
    every analog layer but the recurrent ones (which --pack-tiles leaves alone) with plain
    logical `tiles`; returns their live position ranges and the layers whose inputs are
    routed (--depthwise packed)."""
    live: dict[int, np.ndarray] = {}
    routed: set[int] = set()
    cw = cfg.weight_cols_per_tile
    for i, entry in enumerate(layers):
        if entry["placement"] != "analog" or entry["kind"] == "recurrent":
            continue
        keys = entry["arrays"]
        if "pack_map" in keys:
            tiles, used = layer_tiles(bundle, bundle.layers[i])
            live[i] = arrays[keys["pack_map"]][:, 2:4].astype(np.int64)
            for name in ("packed_tiles", "pack_map"):
                arrays.pop(keys.pop(name))
            keys["tiles"] = f"layers/{i:03d}/tiles"
            arrays[keys["tiles"]] = tiles
            del entry["tiles"]["packing"]
            p = entry["params"]
            if bundle.manifest["summary"].get("depthwise") == "packed" and p.get("group", 1) == p.get("in_channels") > 1:
                routed.add(i)
        else:  # kept plain: its tiles were all full
            live[i] = np.tile(np.array([0, cw], dtype=np.int64), (int(entry["tiles"]["tiles_used"]), 1))
    arrays.pop(bundle.manifest["pool"]["tiles"])
    return live, routed


def _same_sharing(old: Bundle, manifest: dict[str, Any], arrays: dict[str, np.ndarray], live: dict[int, Any]) -> None:
    """Refuse new weights that would share the tiles otherwise (another deployment)."""
    same = (manifest["pool"] or {}).get("physical_tiles") == old.manifest["pool"]["physical_tiles"]
    for i in live if same else ():
        a, b = old.layers[i]["arrays"].get("pack_map"), manifest["layers"][i]["arrays"].get("pack_map")
        if (a is None) != (b is None) or (a is not None and not np.array_equal(old.arrays[a], arrays[b])):
            same = False
            break
    if not same:
        raise ModelError("the new weights place the layers' partly used tiles on the shared tiles otherwise than "
                         "the bundle does, so the result would not be the same deployment; refused, nothing "
                         "written.")


def _map_layer(idx: int, entry: dict[str, Any], weight: np.ndarray, aff: Affine, cfg: MappingConfig,
               hardware: Any, arrays: dict[str, np.ndarray], pending: dict[int, np.ndarray] | None = None,
               routed: bool = False) -> None:
    """Map one layer with the converter's own per-layer code; refuse another tile grid.
    `pending`: the layers' live ranges, for tiles shared again afterwards (`_unshare`);
    `routed`: then, whether it is a --depthwise packed layer."""
    structure = conv_structure(entry["params"], entry["N"]) if entry["kind"] == "conv" else None
    spec = LayerSpec(entry["name"], entry["kind"], entry["input"], entry["output"], weight, aff,
                     entry["affine"]["source"], entry.get("weight_name", ""), entry["params"], structure)
    new_arrays: dict[str, np.ndarray] = {}
    packing_used = entry["placement"] == "analog" and "packing" in entry["tiles"]
    packed = routed or (packing_used and is_depthwise(spec))  # --depthwise packed: channel-major rows
    stack = packing_used and arrays[entry["arrays"]["pack_map"]].shape[1] == 5  # format 5's --pack-tiles
    mapped = _layer_arrays(idx, spec, entry["placement"], cfg, new_arrays, hardware, packed, stack=stack,
                           pending=pending if entry["placement"] == "analog" else None)
    if entry["placement"] == "analog":
        old, new = entry["tiles"], mapped["tiles"]
        differ = [f"{f} {old[f]} -> {new[f]}" for f in GRID_FIELDS if old.get(f) != new[f]]
        if packing_used and old["packing"] != new.get("packing"):
            differ.append("another packing of its tiles")
        old_used = arrays[entry["arrays"]["tile_used"]].astype(bool)
        if not differ and not np.array_equal(old_used, new_arrays[mapped["arrays"]["tile_used"]]):
            differ.append("a different set of allocated tiles")
        if differ:
            raise ModelError(f"layer {entry['name']!r}: the new weights map onto other tiles than the bundle's "
                             f"({'; '.join(differ)}), so the result would not be the same deployment. With analog "
                             "floating point an exponent gained or lost changes the columns; refused, nothing "
                             "written.")
        new["adc_per_vector"] = adc_per_vector(new)
        new["vectors_per_sample"] = old.get("vectors_per_sample")
        entry["tiles"] = new
    for key in entry["arrays"].values():
        arrays.pop(key, None)
    arrays.update(new_arrays)
    entry["arrays"] = mapped["arrays"]


def _remeasure_ranges(out: Bundle, old: Bundle, x: np.ndarray, hardware: Any) -> dict[str, Any]:
    """Measure every analog layer's ranges again with the range finder `convert` uses, at
    the percentiles the input's ranges were measured at."""
    from xbar.hardware import HardwareSpec
    from xbar.runtime.ranges import find_ranges

    first = next(e["ranges"] for e in old.layers if "ranges" in e)
    spec = (hardware or HardwareSpec()).override({"dac.percentile": float(first["dac_percentile"]),
                                                  "adc.percentile": float(first["adc_percentile"])})
    for entry in out.layers:
        r = entry.pop("ranges", None)
        for key in ("adc", "adc_absmax") if r else ():
            out.arrays.pop(r[key], None)
    x = np.asarray(x)
    if x.ndim == 0 or len(x) == 0:
        raise DataError("calibration data for the ranges holds no samples")
    find_ranges(out, x, spec)
    return {"samples": int(len(x)), "dac_percentile": spec.dac.percentile, "adc_percentile": spec.adc.percentile}
