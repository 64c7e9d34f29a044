"""prh-bench: representational alignment across model zoos (the Platonic Representation Hypothesis)."""

__version__ = "0.1.0"
