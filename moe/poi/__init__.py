"""Proof of Intelligence: the math validators use to score experts (pure functions, no network).

value.py (coalition value in bits per byte), shapley.py (exact / sampled Shapley), cheats.py + receipts.py
(detectors for cheating experts), commit.py (seed commit–reveal and window draws), scoring.py (weights per uid).
"""
