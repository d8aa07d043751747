"""Errors a user can cause and fix; the CLI prints them as one paragraph, no traceback."""

import re


class XbarError(Exception):
    """Base class for every error caused by user input (files, options, models)."""


class ModelError(XbarError):
    """The ONNX model cannot be loaded, checked or converted."""


class UnsupportedOpError(ModelError):
    """An operator xbar cannot execute."""


class BundleError(XbarError):
    """A bundle file is missing, corrupt, tampered with or of an unknown format version."""


class DataError(XbarError):
    """An input data file does not fit the model."""


class ConfigError(XbarError):
    """An option or configuration value is out of its allowed range."""


def brief(exc: Exception) -> str:
    """An onnx or onnxruntime error in one line for a message of ours, without onnxruntime's
    source paths and C++ signatures (which cut at a fixed length left the reason itself
    out, and widened the message past any terminal)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"\S*onnxruntime_src/\S*\s+(?:onnxruntime::\S*\([^)]*\)\s*)?", "", text)
    return text[:300] if text else type(exc).__name__
