"""Post-training INT8 quantization of a deployment graph into explicit QuantizeLinear/DequantizeLinear (Q/DQ).

TensorRT 11 builds strongly typed networks only, so INT8 must be written into the graph. The calibration and the
Q/DQ insertion are ONNX Runtime's (``onnxruntime.quantization.quantize_static`` in QDQ format), a maintained tool
whose output TensorRT's ONNX parser and ORT's own CPU kernels both understand; NVIDIA ModelOpt would do the same
job but pulls in torch-side dependencies and a GPU-oriented calibration loop that this CPU-only path does not need.

What gets quantized (``QUANTIZED_OP_TYPES``): the convolutions and matrix products whose weights are constants,
i.e. backbone, FPN, RPN head, box head and mask head, except the RPN's two prediction convolutions
(``FLOAT_SCOPES``: objectness logits and box deltas, which go straight into top-k, decoding and NMS). Weights
int8, symmetric, per output channel; activations int8, symmetric (zero point 0, as TensorRT requires), one scale
per tensor from calibration. Biases stay float
(TensorRT adds them in the layer's accumulator precision itself). Everything else, the detection logic (anchors,
box decoding and clipping, top-k, NMS, RoIAlign level assignment and sampling, mask gather), stays float: its
tensors are coordinates and scores, where an 8-bit grid of the whole image would move boxes by pixels.

Calibration images go through the runtime's own preprocessing (``deploy_sdk.preprocessing.prepare_batch``), so the
graph sees exactly the resized, zero-padded canvas and ``image_sizes`` it sees in production.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, TextIO, Union

import numpy as np

from deploy_sdk.conversion.graph_file import load_deployment_graph, require_fp32, write_deployment_graph
from deploy_sdk.errors import DeploySdkError, EngineError, require
from deploy_sdk.model_metadata import ModelMetadata
from deploy_sdk.progress import ProgressBar

__all__ = [
    "QUANTIZED_OP_TYPES",
    "FLOAT_SCOPES",
    "CALIBRATION_METHODS",
    "TARGETS",
    "ImageCalibrationReader",
    "QuantizeReport",
    "find_calibration_images",
    "fold_channel_affine_into_conv",
    "quantize_int8",
]

QUANTIZED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# --method → ORT CalibrationMethod name. minmax: fast, no outlier handling; percentile clips the top 0.001 % of
# each activation histogram; entropy picks the range minimizing KL divergence (slowest, most memory).
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
# --target: who runs the graph. TensorRT takes only symmetric int8 activations (zero point 0). ONNX Runtime's
# x86 CPU kernels fuse DQ → Conv → Q into QLinearConv only for some layers with int8 activations, but for every
# layer with asymmetric uint8 activations (its U8S8 path), so the CPU graph uses those; TensorRT rejects it.
TARGETS = ("tensorrt", "cpu")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGES, IMAGE_SIZES = "images", "image_sizes"
# Layers kept float by default (node-name prefixes, the exporter's module scopes): the RPN's prediction convs. Their
# outputs are the objectness logits and box deltas that feed the per-level top-k, box decoding and NMS directly;
# on an 8-bit grid the top-k cut and NMS order change. ONNX Runtime's INT8 kernels happened to tolerate that, but
# OpenVINO, which runs the whole graph in INT8, lost 2.7 box AP points on the shipped model with them quantized and
# none without (docs/precision.md). They are 1x1 convolutions with 3 and 12 output channels: no measurable time.
FLOAT_SCOPES = ("/rpn_head/cls_logits", "/rpn_head/bbox_pred")


def find_calibration_images(calib_dir: Union[str, os.PathLike], num_images: Optional[int] = None) -> List[Path]:
    """Image files under ``calib_dir`` (recursively, sorted by path so runs repeat), the first ``num_images``."""
    root = Path(calib_dir)
    if not root.is_dir():
        raise DeploySdkError(
            f"calibration directory {root} does not exist; make one with e.g. "
            f"maskrcnn-deploy data --out {root} --num 100 --seed 7"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DeploySdkError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under calibration directory {root}")
    if num_images is not None:
        if num_images < 1:
            raise DeploySdkError(f"--num-images must be at least 1, got {num_images}")
        files = files[:num_images]
    return files


class ImageCalibrationReader:
    """Feeds calibration images to ONNX Runtime's calibrator, one image per batch, with a progress bar.

    Each item is ``{"images": [1, 3, H, W] (0–255 RGB, the graph's input dtype), "image_sizes": [1, 2] int64}``,
    made by the runtime's preprocessing from the model's metadata (resize to min/max size, pad to the stride).
    Implements ``onnxruntime.quantization.CalibrationDataReader`` (``get_next`` returns None when done); it is
    also iterable, for tests and for tools that want the same inputs.
    """

    def __init__(
        self,
        image_paths: Sequence[Path],
        metadata: ModelMetadata,
        images_dtype: type = np.float32,
        progress: bool = True,
        stream: Optional[TextIO] = None,
    ):
        self.image_paths = list(image_paths)
        self.metadata = metadata
        self.images_dtype = images_dtype
        self._next = 0
        self._bar: Optional[ProgressBar] = None
        self._progress = progress
        self._stream = stream

    def _inputs(self, path: Path) -> Dict[str, np.ndarray]:
        from deploy_sdk.preprocessing import load_image, prepare_batch

        md = self.metadata
        fixed = (md.fixed_height, md.fixed_width) if md.fixed_height and md.fixed_width else None
        batch = prepare_batch(
            [load_image(str(path), what=f"calibration image {path}")],
            md.min_size,
            md.max_size,
            md.size_divisible,
            fixed,
            dtype=self.images_dtype,
        )
        return {IMAGES: batch.images, IMAGE_SIZES: batch.image_sizes}

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._next >= len(self.image_paths):
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            return None
        if self._bar is None and self._progress:
            self._bar = ProgressBar(len(self.image_paths), "calibrating", stream=self._stream)
        item = self._inputs(self.image_paths[self._next])
        self._next += 1
        if self._bar is not None:
            self._bar.update()
        return item

    def rewind(self) -> None:
        self._next = 0

    def __iter__(self):
        for path in self.image_paths:
            yield self._inputs(path)

    def __len__(self) -> int:
        return len(self.image_paths)


@dataclass
class QuantizeReport:
    """What :func:`quantize_int8` did: node names quantized (weights int8) and the calibration it used."""

    quantized_nodes: List[str] = field(default_factory=list)
    num_calibration_images: int = 0
    method: str = "minmax"
    target: str = "tensorrt"


def _images_dtype(model) -> type:
    from onnx import TensorProto

    for value in model.graph.input:
        if value.name == IMAGES:
            return np.uint8 if value.type.tensor_type.elem_type == TensorProto.UINT8 else np.float32
    raise EngineError(f"the graph has no '{IMAGES}' input; export it with: maskrcnn-deploy export")


def _quantizable_nodes(model, exclude: Iterable[str]) -> List[str]:
    """Names of main-graph nodes of QUANTIZED_OP_TYPES whose weight (input 1) is a constant initializer, less
    ``exclude`` and the nodes in :data:`FLOAT_SCOPES`."""
    initializers = {init.name for init in model.graph.initializer}
    constants = {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    excluded = set(exclude)
    names = []
    for node in model.graph.node:
        if node.name.startswith(FLOAT_SCOPES):
            continue
        if node.op_type in QUANTIZED_OP_TYPES and len(node.input) > 1 and node.name not in excluded:
            if node.input[1] in initializers or node.input[1] in constants:
                if not node.name:
                    raise EngineError(f"a {node.op_type} node has no name; ORT's quantizer needs names. Re-export.")
                names.append(node.name)
    return names


def _constant_arrays(model) -> Dict[str, np.ndarray]:
    from onnx import numpy_helper

    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            arrays[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return arrays


def _tag_as_preprocessed(model) -> None:
    """Record in ``model`` that it has had the pre-processing ONNX Runtime's quantizer asks for.

    ``quantize_static`` logs "Please consider pre-processing before quantization" (twice) for a model without
    ONNX Runtime's pre-processing tag. Its pre-processing step (``quant_pre_process``) is shape inference plus
    graph optimization, chiefly batch-norm folding. For this graph the folding is done by
    :func:`fold_channel_affine_into_conv` just before (frozen batch norms export as Mul + Add, which ORT's
    optimizer folds only in the float graph), and ``quantize_static`` runs ONNX shape inference on its input
    itself; so the model is tagged as pre-processed rather than the warning being filtered.
    """
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata

    add_pre_process_metadata(model)


def fold_channel_affine_into_conv(model) -> int:
    """Fold ``Conv → Mul(per-channel constant) → Add(per-channel constant)`` into the Conv's weight and bias.

    torchvision's detection backbones use ``FrozenBatchNorm2d``, which exports as a Mul and an Add after each
    convolution. ONNX Runtime folds them in an fp32 graph, but once Q/DQ sits between Conv and Mul nothing can:
    the int8 convolution would then quantize pre-normalization values and run two float ops per layer. Folding
    first gives the quantizer the layer the runtime actually computes. Edits ``model`` in place; returns the number
    of convolutions folded. The Add's output name is kept, so the rest of the graph is untouched.
    """
    from onnx import numpy_helper

    arrays = _constant_arrays(model)
    graph = model.graph
    consumers: Dict[str, List] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def per_channel(node, data_input: str, channels: int) -> Optional[np.ndarray]:
        other = [i for i in node.input if i != data_input]
        if len(other) != 1 or other[0] not in arrays:
            return None
        value = arrays[other[0]]
        if value.size != channels or value.ndim > 4 or (value.ndim >= 3 and value.shape[-3] != channels):
            return None
        return value.reshape(channels).astype(np.float64)

    inits = {init.name: init for init in graph.initializer}
    removed = set()
    folded = 0
    for conv in list(graph.node):
        if conv.op_type != "Conv" or conv.input[1] not in inits or (len(conv.input) > 2 and conv.input[2] not in inits):
            continue
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        channels = weight.shape[0]
        users = consumers.get(conv.output[0], [])
        if len(users) != 1 or users[0].op_type != "Mul" or conv.output[0] in outputs:
            continue
        mul = users[0]
        scale = per_channel(mul, conv.output[0], channels)
        add_users = consumers.get(mul.output[0], [])
        if scale is None or len(add_users) != 1 or add_users[0].op_type != "Add" or mul.output[0] in outputs:
            continue
        add = add_users[0]
        shift = per_channel(add, mul.output[0], channels)
        if shift is None:
            continue
        # Conv weights may be shared (the RPN head runs one conv on every level); fold into a private copy.
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 else 0.0
        new_w = (weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        new_b = (bias * scale + shift).astype(np.float32)
        w_name, b_name = f"{conv.name}.folded_weight", f"{conv.name}.folded_bias"
        graph.initializer.extend([numpy_helper.from_array(new_w, w_name), numpy_helper.from_array(new_b, b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = add.output[0]
        removed.update({id(mul), id(add)})
        folded += 1
    if folded:
        keep = [n for n in graph.node if id(n) not in removed]
        detached = []
        for node in keep:
            copy = type(node)()
            copy.CopyFrom(node)
            detached.append(copy)
        del graph.node[:]
        graph.node.extend(detached)
        used = {i for n in graph.node for i in n.input}
        unused = [init for init in graph.initializer if init.name not in used]
        for init in unused:
            graph.initializer.remove(init)
    return folded


def quantize_int8(
    onnx_path: Union[str, os.PathLike],
    output_path: Union[str, os.PathLike],
    calib_dir: Union[str, os.PathLike],
    num_images: Optional[int] = 100,
    method: str = "minmax",
    exclude_nodes: Sequence[str] = (),
    target: str = "tensorrt",
    progress: bool = True,
    stream: Optional[TextIO] = None,
) -> QuantizeReport:
    """Write an INT8 Q/DQ copy of the deployment graph ``onnx_path`` to ``output_path`` (atomically).

    ``calib_dir``: images (any format Pillow reads) to calibrate activation ranges on; they must not be the images
    you evaluate on. ``num_images``: how many of them (sorted by path). ``method``: one of CALIBRATION_METHODS.
    ``exclude_nodes``: node names to keep float (e.g. a layer found to be sensitive).
    ``target``: "tensorrt" (symmetric int8 activations; also runs on ONNX Runtime) or "cpu" (asymmetric uint8
    activations, ONNX Runtime CPU's fast path; TensorRT cannot build it).
    The graph inputs and outputs keep their types and shapes; the metadata gets ``precision = "int8"``.
    """
    stream = sys.stderr if stream is None else stream
    onnx = require("onnx", "convert", "INT8 quantization")
    from onnxruntime import quantization as ortq

    if target not in TARGETS:
        raise DeploySdkError(f"--target {target!r} is not one of {list(TARGETS)}")
    if method not in CALIBRATION_METHODS:
        raise DeploySdkError(f"--method {method!r} is not one of {sorted(CALIBRATION_METHODS)}")
    src = Path(onnx_path)
    model, metadata = load_deployment_graph(src, "INT8 quantization")
    require_fp32(metadata, src, "quantize")
    images = find_calibration_images(calib_dir, num_images)
    folded = fold_channel_affine_into_conv(model)
    _tag_as_preprocessed(model)
    nodes = _quantizable_nodes(model, exclude_nodes)
    if not nodes:
        raise DeploySdkError(f"{src} has no {'/'.join(QUANTIZED_OP_TYPES)} node with constant weights to quantize")
    print(
        f"quantizing {len(nodes)} Conv/Gemm/MatMul nodes of {src.name} to INT8 ({folded} frozen batch norms "
        f"folded into their convolutions first); calibrating on {len(images)} "
        f"images from {calib_dir} ({method})",
        file=stream,
        flush=True,
    )
    reader = ImageCalibrationReader(images, metadata, _images_dtype(model), progress=progress, stream=stream)
    for_tensorrt = target == "tensorrt"
    extra_options: Dict[str, Union[bool, float]] = {
        # TensorRT takes only symmetric int8 (zero point 0) for activations and weights.
        "ActivationSymmetric": for_tensorrt,
        "WeightSymmetric": True,
        # Float bias: TensorRT fuses it into the convolution in its own accumulator precision; an int32 DQ bias
        # would pin scale_in * scale_w, which TensorRT does not require.
        "QuantizeBias": False,
        # Only MatMuls with a constant weight are layers; a MatMul of two activations is detection math.
        "MatMulConstBOnly": True,
        # Each consumer gets its own Q/DQ pair so TensorRT can fuse each layer independently.
        "DedicatedQDQPair": for_tensorrt,
    }
    if method == "percentile":
        extra_options["CalibPercentile"] = 99.999
    with tempfile.TemporaryDirectory(prefix="maskrcnn-quantize-") as tmp:
        folded_path = Path(tmp) / "folded.onnx"
        onnx.save(model, str(folded_path))
        raw = Path(tmp) / "int8.onnx"
        ortq.quantize_static(
            model_input=str(folded_path),
            model_output=str(raw),
            calibration_data_reader=reader,
            quant_format=ortq.QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_quantize=nodes,
            per_channel=True,
            reduce_range=False,
            activation_type=ortq.QuantType.QInt8 if for_tensorrt else ortq.QuantType.QUInt8,
            weight_type=ortq.QuantType.QInt8,
            calibrate_method=getattr(ortq.CalibrationMethod, CALIBRATION_METHODS[method]),
            extra_options=extra_options,
        )
        quantized = onnx.load(str(raw))
    metadata.precision = "int8"
    metadata.extra = dict(metadata.extra, calibration={"images": len(images), "method": method, "target": target})
    write_deployment_graph(quantized, metadata, output_path)
    return QuantizeReport(quantized_nodes=nodes, num_calibration_images=len(images), method=method, target=target)
