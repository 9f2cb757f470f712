"""spendgate test suite (a package, so a stray top-level `tests` elsewhere cannot shadow it)."""
