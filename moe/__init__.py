"""hivemoe: a decentralized mixture of byte-level experts trained across untrusting peers."""

__version__ = "0.1.0"
