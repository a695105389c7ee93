"""Evaluation: automatic metrics, LLM-as-a-judge, analyses and the run report."""

from esevo_ray.evaluation.metrics import compute_metrics, metrics_report, score_responses

__all__ = ["compute_metrics", "metrics_report", "score_responses"]
