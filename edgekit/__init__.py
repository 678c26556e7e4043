"""edgekit: shrink a model, prove it is still good, put it on devices, watch it, take it back."""

__version__ = "0.1.0"
