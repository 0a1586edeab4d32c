"""entropo: reinforcement learning for reasoning language models, with entropy control."""

__version__ = "0.1.0"
