"""attnsweep: which attention implementation trains GPT-2 fastest, compiled or eager."""

__version__ = "0.1.0"
