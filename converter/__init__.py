"""The converter: ONNX model → crossbar deployment bundle."""

from xbar.converter.convert import convert

__all__ = ["convert"]
