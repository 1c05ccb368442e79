"""Offline evaluation of a finished run: its saved experts, gate, seed, baselines and students on any text."""
