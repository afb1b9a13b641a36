"""MM-SY analysis: hidden states, per-layer probes and visual attention."""
