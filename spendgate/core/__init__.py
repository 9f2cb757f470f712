"""The pure core: decisions over plain values, no I/O (``now`` is passed in)."""
