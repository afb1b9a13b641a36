"""MM-SY model adapters for lmms-eval, attention amplification and the model organism."""
