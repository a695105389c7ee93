"""Preference-pair generation: engines, prompts, robust parsing, and the Ray Data pipeline."""
