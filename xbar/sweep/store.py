"""A sweep's results folder: the spec it ran, and its rows as Parquet, one file per finished task.

    RESULTS_DIR/
      spec.toml          the spec as given (copied when the sweep starts)
      sweep.json         the spec's fingerprint, the xbar version, the columns and the tasks
      rows/<task>.parquet  the rows of one (point, chip) task over its drift times
      bundles/<key>.xbar   each distinct prepared bundle (mapping, ranges, fine-tune), by content

A task's file appears whole or not at all (written aside, then renamed), so killing a sweep
loses only the tasks in flight and a second run skips every task whose file exists. One file
per task rather than one growing file because a Parquet file cannot be appended to: the
folder of files is read as one table (the layout `pyarrow.dataset` and Dask read as well).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from xbar.sweep.spec import SpecError, Study

META = "sweep.json"
SPEC = "spec.toml"
ROWS = "rows"
BUNDLES = "bundles"
#: Columns every row has besides the spec's settings, with their Parquet types and meanings.
FIXED_COLUMNS = (
    ("task", "string", "the (point, chip) task's content hash"),
    ("point", "int64", "the point's index in the spec's expansion (0-based)"),
    ("label", "string", "the settings that vary between points, as text"),
    ("seed", "int64", "the chip instance"),
    ("time_s", "float64", "time since programming (s)"),
    ("time", "string", "the same, as text"),
    ("accuracy", "float64", "top-1 accuracy on the test data (null without labels)"),
    ("agreement", "float64", "top-1 agreement with the same bundle on ideal hardware"),
    ("ideal_accuracy", "float64", "the prepared bundle's accuracy on ideal hardware (before any chip calibration)"),
    ("layer_snr_db", "string", "JSON {layer: SNR dB} of the chip's analog layers (null unless snr_samples)"),
    ("layer_affine_snr_db", "string", "JSON {layer: SNR dB left after the best per-channel affine re-fit} "
                                      "(null unless snr_samples)"),
    ("wall_s", "float64", "seconds the row took on its worker (chip, inference, its calibration)"),
    ("config", "string", "JSON: the row's full resolved configuration (hardware at its time)"),
    ("xbar_version", "string", "the xbar that computed the row"),
)


_LONG_TEXT = ("config", "layer_snr_db", "layer_affine_snr_db", "label")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise SpecError("xbar sweep stores its rows as Parquet and needs pyarrow; install the sweep extra: "
                        "pip install 'xbar[sweep]'") from None
    return pyarrow


def _field_type(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int64"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float64"
    return "string"


def field_types(study: Study) -> dict[str, str]:
    """The Parquet type of each setting column, from every value the spec gives it."""
    fixed = {name for name, _, _ in FIXED_COLUMNS}
    clash = [c for c in study.columns if c in fixed]
    if clash:  # pragma: no cover - spec names never collide (they carry a namespace or are 'model'/'ranges')
        raise SpecError(f"setting {clash[0]!r} collides with a result column")
    return {c: _field_type([p.fields.get(c) for p in study.points]) for c in study.columns}


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if kind == "float64":
        return float(value)
    return value


class Results:
    """An open results folder for one study."""

    def __init__(self, root: Path, study: Study, types: dict[str, str]):
        self.root, self.study, self.types = root, study, types
        self.rows_dir = root / ROWS
        self.bundles_dir = root / BUNDLES
        self._schema = None

    # ---- opening ---------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | Path, study: Study, force: bool = False) -> tuple["Results", str]:
        """Create or reopen `root` for `study`; refuse another spec's folder unless `force`.
        Returns the folder and a line saying what was found there."""
        root = Path(root)
        keys = {study.task_key(p, s) for p in study.points for s in p.seeds}
        note = "new results folder"
        if root.exists() and not root.is_dir():
            raise SpecError(f"{root} is a file; give a folder for the results (-o)")
        if root.is_dir() and any(root.iterdir()):
            meta_path = root / META
            if not meta_path.is_file():
                raise SpecError(f"{root} is not empty and is not a sweep results folder (no {META}); give a new or "
                                "empty folder, so that nothing of yours is overwritten")
            try:
                meta = json.loads(meta_path.read_text())
                old = meta["fingerprint"]
            except (ValueError, KeyError) as exc:
                raise SpecError(f"{meta_path} is unreadable ({exc}); give a new folder") from None
            done = cls._done(root / ROWS)
            if old == study.fingerprint():
                note = f"resuming: {len(done & keys)} of {len(keys)} tasks already done"
            elif not force:
                raise SpecError(
                    f"{root} holds the results of another spec ({meta.get('spec_path', '?')}, started "
                    f"{meta.get('started', '?')}, {len(done)} finished tasks), and {study.path} differs from it "
                    "(settings, seeds, times, data, models or xbar version). Give a new folder with -o, or "
                    "--force to replace them: the finished tasks both specs share are kept, the others deleted.")
            else:
                stale = done - keys
                for key in stale:
                    (root / ROWS / f"{key}.parquet").unlink()
                note = (f"--force: replaced another spec's results; kept {len(done & keys)} finished tasks the new "
                        f"spec shares, deleted {len(stale)}")
        root.mkdir(parents=True, exist_ok=True)
        (root / ROWS).mkdir(exist_ok=True)
        (root / BUNDLES).mkdir(exist_ok=True)
        for tmp in (root / ROWS).glob(".*.tmp*"):  # a killed writer's leftovers
            tmp.unlink(missing_ok=True)
        for tmp in (root / BUNDLES).glob(".*.tmp*"):
            tmp.unlink(missing_ok=True)
        out = cls(root, study, field_types(study))
        out._write_meta()
        return out, note

    def _write_meta(self) -> None:
        from xbar import __version__

        st = self.study
        meta = {
            "fingerprint": st.fingerprint(), "xbar_version": __version__, "spec_path": str(st.path),
            "started": self._first_started(),  # the first run of this spec here; resumes keep it
            "models": {k: str(v) for k, v in st.models.items()}, "test_data": str(st.test_data),
            "calib_data": str(st.calib_data) if st.calib_data else None,
            "train_data": str(st.train_data) if st.train_data else None,
            "seeds": st.seeds, "times_s": st.times,
            "columns": {**{name: kind for name, kind, _ in FIXED_COLUMNS}, **self.types},
            "column_meanings": {name: meaning for name, _, meaning in FIXED_COLUMNS},
            "points": [{"index": p.index, "label": p.label, "fields": p.fields, "resolved": p.resolved()}
                       for p in st.points],
        }
        self._atomic(self.root / SPEC, st.text.encode())
        self._atomic(self.root / META, (json.dumps(meta, indent=1, default=str) + "\n").encode())

    def _first_started(self) -> str:
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        try:
            meta = json.loads((self.root / META).read_text())
        except (OSError, ValueError):
            return now
        return meta.get("started", now) if meta.get("fingerprint") == self.study.fingerprint() else now

    @staticmethod
    def _atomic(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    @staticmethod
    def _done(rows_dir: Path) -> set[str]:
        return {p.stem for p in rows_dir.glob("*.parquet") if not p.name.startswith(".")} if rows_dir.is_dir() else set()

    # ---- rows --------------------------------------------------------------------------

    def done(self) -> set[str]:
        return self._done(self.rows_dir)

    def columns(self) -> list[tuple[str, str]]:
        """(name, kind) of every column, in table order: task, point, label, the settings, the results."""
        return ([(name, kind) for name, kind, _ in FIXED_COLUMNS[:3]] + list(self.types.items())
                + [(name, kind) for name, kind, _ in FIXED_COLUMNS[3:]])

    def schema(self):
        if self._schema is None:
            pa = _pyarrow()
            from xbar import __version__

            types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
            self._schema = pa.schema([(name, types[kind]) for name, kind in self.columns()],
                                     metadata={"xbar_version": __version__,
                                               "spec_fingerprint": self.study.fingerprint()})
        return self._schema

    def write(self, key: str, rows: list[dict[str, Any]]) -> None:
        """The rows of one finished task, as one Parquet file that appears whole."""
        pa = _pyarrow()
        import pyarrow.parquet as pq

        clean = [{name: _cell(r.get(name), kind) for name, kind in self.columns()} for r in rows]
        table = pa.Table.from_pylist(clean, schema=self.schema())
        final = self.rows_dir / f"{key}.parquet"
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        # No min/max statistics for the long text columns: they would be stored twice more in
        # the footer and halve nothing a reader filters on.
        pq.write_table(table, tmp, compression="zstd",
                       write_statistics=[n for n in table.column_names if n not in _LONG_TEXT])
        os.replace(tmp, final)

    def bundle_path(self, key: str) -> Path:
        return self.bundles_dir / f"{key}.xbar"

    def save_bundle_bytes(self, key: str, blob: bytes) -> None:
        self._atomic(self.bundle_path(key), blob)


def read_rows(root: str | Path):
    """Every finished row of a results folder as one pyarrow Table, ordered by point, seed, time."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    root = Path(root)
    if not (root / META).is_file():
        raise SpecError(f"{root} is not a sweep results folder (no {META}); give the folder `xbar sweep -o` wrote")
    files = sorted(p for p in (root / ROWS).glob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise SpecError(f"{root} holds no finished rows yet; run (or resume) the sweep with `xbar sweep`")
    # Rows written before a column existed (an older xbar, resumed) read it as null.
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    return table.sort_by([("point", "ascending"), ("seed", "ascending"), ("time_s", "ascending")])


def read_meta(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    try:
        return json.loads((root / META).read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"{root}: cannot read {META} ({exc}); give the folder `xbar sweep -o` wrote") from None
