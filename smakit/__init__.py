"""smakit: Sparse Modular Activation for PyTorch."""

__version__ = "0.1.0"
