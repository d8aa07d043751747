"""Errors a user can cause and fix; the CLI prints them as one paragraph, no traceback."""


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
