"""`xbar sweep` and `xbar plot`: design-space studies from a TOML spec, run on Dask, stored as Parquet rows."""
