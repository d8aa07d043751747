"""The operator vocabulary shared by converter and runtime.

The converter accepts a node only if its op is listed here (or is an analog layer); the
runtime registers an implementation for every name listed (a test keeps the two equal).
"""

ANALOG_OPS = frozenset({"Conv", "Gemm", "MatMul"})

# Recurrent ops: their W and R matrices go onto crossbars, their time loop is digital
# (converter/recurrent.py, runtime/recurrent.py).
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})

# Ops the runtime executes digitally, in NumPy (MatMul too: between two activations).
DIGITAL_OPS = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "CastLike", "Ceil",
    "Celu", "Clip", "Concat", "ConstantOfShape", "Cos", "CumSum", "DepthToSpace", "Div", "Dropout", "Einsum",
    "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu",
    "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GroupNormalization", "HardSigmoid",
    "HardSwish", "Identity", "InstanceNormalization", "LRN", "LayerNormalization", "LeakyRelu", "Less",
    "LessOrEqual", "Log", "LogSoftmax", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mod", "Mul", "Neg", "Not",
    "Or", "PRelu", "Pad", "Pow", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ScatterElements",
    "ScatterND", "Selu", "Shape", "Sigmoid", "Sign", "Sin", "Size", "Slice", "Softmax", "Softplus", "Softsign",
    "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze",
    "Where", "Xor",
})

# Graph node op the converter emits for a layer mapped onto crossbars (or pinned digital).
LAYER_OP = "XbarLayer"

# Graph node op for a recurrent node: its digital loop over the crossbar layers it lists.
RECURRENT_OP = "XbarRecurrent"
