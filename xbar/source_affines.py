"""The affines as converted, kept in a bundle at its first calibration.

A calibration replaces each analog layer's per-output affine with one fitted to one chip.
The network as converted stays the reference: what `xbar eval` calls ideal, what a later
calibration starts from (so that it does not stack on the first), and what fine-tuning
trains. Calibration copies each affine to `layers/NNN/source_*` arrays and a
`source_affine` record on the layer (origin, ε, array keys) before its first fit.
"""

from __future__ import annotations

import copy

from xbar.affine import FIELDS
from xbar.bundle import Bundle


def keep_source_affines(bundle: Bundle) -> None:
    """Before the first calibration, keep each analog layer's affine as converted (in place).

    A calibrated bundle is judged against the network the user converted, not against its
    own chip-fitted affines on exact hardware; `source_network` restores that network.
    """
    for i, entry in enumerate(bundle.layers):
        if entry["placement"] != "analog" or "source_affine" in entry:
            continue
        keys = {name: f"layers/{i:03d}/source_{name}" for name in FIELDS}
        for name in FIELDS:
            bundle.arrays[keys[name]] = bundle.array(entry["arrays"][name])
        entry["source_affine"] = {"source": entry["affine"]["source"], "eps": entry["affine"]["eps"], "arrays": keys}


def has_source_affines(bundle: Bundle) -> bool:
    """False only for a calibrated bundle written before source affines were kept."""
    return not bundle.manifest.get("calibration") or all(
        "source_affine" in e for e in bundle.layers if e["placement"] == "analog")


def restore_source_affines(bundle: Bundle) -> None:
    """Every analog layer's affine back to the one kept at the first calibration (in place)."""
    for entry in bundle.layers:
        src = entry.get("source_affine")
        if src is None:
            continue
        for name in FIELDS:
            bundle.arrays[entry["arrays"][name]] = bundle.array(src["arrays"][name])
        entry["affine"]["source"], entry["affine"]["eps"] = src["source"], src["eps"]


def source_network(bundle: Bundle) -> Bundle:
    """The bundle with every analog layer's affine as converted, without calibration records
    and the kept copies (itself if never calibrated)."""
    if not any("source_affine" in e for e in bundle.layers):
        return bundle
    out = Bundle(manifest=copy.deepcopy(bundle.manifest), arrays=dict(bundle.arrays))
    restore_source_affines(out)
    for entry in out.layers:
        for key in entry.pop("source_affine", {}).get("arrays", {}).values():
            out.arrays.pop(key, None)
    out.manifest["calibration"] = []
    return out
