"""Serving: the Ray Serve application (OpenAI-compatible chat on vLLM's async engine)."""
