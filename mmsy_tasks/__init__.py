"""MM-SY tasks: dataset builders, dialogue rendering, answer extraction and metrics.

This package imports nothing from the other MM-SY packages.
"""

__version__ = "0.1.0"
