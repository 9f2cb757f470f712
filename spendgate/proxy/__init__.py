"""The hot path: OpenAI- and Anthropic-compatible endpoints forwarding to providers."""
