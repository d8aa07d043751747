"""xbar: ONNX networks on analog in-memory-computing crossbars."""

__version__ = "0.1.0"
