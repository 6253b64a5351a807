"""Evaluation: statistics (bootstrap intervals, paired tests) and refusal-rate measurement."""
