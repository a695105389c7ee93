"""Serving: the Ray Serve application (OpenAI-compatible chat) and the human evaluation page."""
