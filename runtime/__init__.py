"""The runtime: executes a bundle in NumPy on a model of the crossbar hardware."""

from xbar.runtime.executor import Runtime

__all__ = ["Runtime"]
