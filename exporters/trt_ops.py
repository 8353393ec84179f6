"""Which ONNX operators TensorRT 10's ONNX parser accepts, as data.

Transcribed from onnx-tensorrt's ``docs/operators.md`` for the TensorRT 10 parser: every
operator listed there as supported. The exporter checks a graph against this list before
it asks TensorRT to build (so an unsupported op is named in one sentence instead of deep in
the parser's log), and the tests walk every node of every exported graph through it.

Type limits that matter for our graphs: TensorRT has no float64 tensors (DOUBLE is only
accepted by casting it away), so graphs must stay float32/int64/bool.
"""

from __future__ import annotations

import onnx

TENSORRT10_ONNX_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool
    BatchNormalization BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DFT DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp
    Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization
    HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
    InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual
    Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or
    PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike
    RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
    Reshape Resize ReverseSequence RoiAlign Round STFT ScaledTanh Scan Scatter
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile
    TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

# Element types TensorRT 10 holds in a network (onnx.TensorProto enum values).
TENSORRT10_TYPES: frozenset[int] = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.BOOL,
    }
)


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """Every reason TensorRT 10's parser would refuse ``model``: unsupported operators
    (with a node that uses each) and element types it has no kernels for. Empty when fine."""
    problems = []
    seen = set()
    for node in _all_nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"operator {node.domain}::{node.op_type} (node {node.name or '?'}) is a custom operator")
        elif node.op_type not in TENSORRT10_ONNX_OPS and node.op_type not in seen:
            seen.add(node.op_type)
            problems.append(f"operator {node.op_type} (node {node.name or '?'}) is not supported")
        if node.op_type == "Cast":
            to = next((attribute.i for attribute in node.attribute if attribute.name == "to"), None)
            if to not in TENSORRT10_TYPES:
                problems.append(f"node {node.name or '?'} casts to {onnx.TensorProto.DataType.Name(to)}")
    for tensor in model.graph.initializer:
        if tensor.data_type not in TENSORRT10_TYPES:
            problems.append(f"initializer {tensor.name} is {onnx.TensorProto.DataType.Name(tensor.data_type)}")
    for value in list(model.graph.input) + list(model.graph.output):
        element = value.type.tensor_type.elem_type
        if element not in TENSORRT10_TYPES:
            problems.append(f"graph tensor {value.name} is {onnx.TensorProto.DataType.Name(element)}")
    return problems


def _all_nodes(graph: onnx.GraphProto):
    """Every node, including those inside If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_nodes(subgraph)
