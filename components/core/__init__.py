"""The small shared core: geo math, storage, errors, PNG metadata."""
