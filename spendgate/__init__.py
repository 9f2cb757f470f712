"""spendgate: an LLM API gateway for AI cost governance."""

__version__ = "0.1.0"
