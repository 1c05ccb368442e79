"""Proof of Intelligence: the math validators use to score experts (pure functions, no network).

value.py (coalition value in bits per byte), shapley.py (exact / sampled Shapley), novelty.py (credit beyond earlier
experts), cheats.py (detectors for cheating experts), causality.py (spliced-twin audits), memorisation.py (lookups of
public text), traffic_check.py (replies that differ from what an expert signed for a router), commit.py (seed
commit–reveal and window draws), eval_source.py (where windows come from), scoring.py (weights per uid).
"""
