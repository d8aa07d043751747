"""The operator vocabulary shared by converter and runtime.

The converter accepts a node only if its op is listed here (or is an analog layer); the
runtime registers an implementation for every name listed (a test keeps the two equal).
"""

ANALOG_OPS = frozenset({"Conv", "Gemm", "MatMul"})

# Graph node op the converter emits for a layer mapped onto crossbars (or pinned digital).
LAYER_OP = "XbarLayer"
