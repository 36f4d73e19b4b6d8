"""locgen: the logic of every pipeline stage, importable and runnable from the `locgen` CLI."""

__version__ = "0.1.0"
