"""Static int8 quantization of an ONNX model with ONNX Runtime (``quantize_static``).

Weights are quantized once; activations get the ranges seen on calibration inputs, fed by
the caller: real frames and the shift buffers seen when streaming real clips for an online
model, real clips for a clip model (``engine.int8`` makes them; this module knows no data).
The result is an ONNX file ONNX Runtime runs with int8 kernels; whether it is good enough is
measured on real clips by ``engine.int8`` before anything is published.

The configuration (``Int8Config``) is what ``bench/deploy.py`` compares on this project's
CPUs; ``DEFAULT_INT8`` is its pick (BENCHMARKS.md, "Deploy"): QDQ format (ONNX Runtime's
recommended one, which fuses each DequantizeLinear -> op -> QuantizeLinear into an int8
kernel when it loads the model), unsigned 8-bit activations and signed 8-bit weights (the
pair x86 int8 kernels take: on AVX2 without VNNI, signed activations were 1.6x slower),
per-channel weight scales (a scale per output channel: MobileNetV2's depthwise convolutions
lose accuracy with one scale a tensor).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tsmcli.errors import ExportError

FORMATS = ("qdq", "qoperator")
INT_TYPES = ("u8", "s8")


@dataclass(frozen=True)
class Int8Config:
    """How a model is quantized: ``format`` (``qdq``: Q/DQ pairs around float ops, or
    ``qoperator``: QLinearConv and friends), ``activations`` and ``weights`` (``u8``/``s8``),
    ``per_channel`` weight scales, ``reduce_range`` (7-bit weights, against the int16
    saturation of AVX2's u8 x s8 multiply-add), ``float_ops`` (op types left in float, e.g.
    ``("Concat", "Slice")`` for the shift's splicing) and ``float_depthwise`` (depthwise
    convolutions left in float)."""

    format: str = "qdq"
    activations: str = "u8"
    weights: str = "s8"
    per_channel: bool = True
    reduce_range: bool = False
    float_ops: tuple[str, ...] = ()
    float_depthwise: bool = False

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        for name in ("activations", "weights"):
            if getattr(self, name) not in INT_TYPES:
                raise ValueError(f"{name} must be one of {INT_TYPES}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["float_ops"] = list(self.float_ops)
        return fields

    def label(self) -> str:
        """Short name for tables: ``qdq u8s8 per-channel``."""
        extras = [
            "per-channel" if self.per_channel else "per-tensor",
            *(["reduce-range"] if self.reduce_range else []),
            *([f"float {'/'.join(self.float_ops)}"] if self.float_ops else []),
            *(["float depthwise"] if self.float_depthwise else []),
        ]
        return f"{self.format} {self.activations}{self.weights} {' '.join(extras)}"


DEFAULT_INT8 = Int8Config()


def quantize_onnx(
    fp32: Path,
    out: Path,
    feeds: Iterable[Mapping[str, Any]],
    config: Int8Config = DEFAULT_INT8,
) -> None:
    """Write the int8 model of ``fp32`` to ``out``, its activation ranges calibrated on
    ``feeds`` (dicts of numpy arrays by input name, every input of the model; read one at a
    time, and what calibration keeps of each is the minimum and maximum of every tensor,
    so memory does not grow with the activations). The model is
    pre-processed first (shape inference, ONNX Runtime's graph optimisations), as ONNX
    Runtime asks. Raises ``ExportError`` when there is no feed or ONNX Runtime fails."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    feeds = iter(feeds)
    first = next(feeds, None)
    if first is None:
        raise ExportError(f"{fp32.name}: no calibration input; give a list with readable clips")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize.") as work:
        prepared = Path(work) / "prepared.onnx"
        try:
            with _quiet():
                quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
                quantize_static(
                    str(prepared),
                    str(out),
                    _Reader(first, feeds),
                    quant_format=QuantFormat.QDQ
                    if config.format == "qdq"
                    else QuantFormat.QOperator,
                    per_channel=config.per_channel,
                    reduce_range=config.reduce_range,
                    activation_type=types[config.activations],
                    weight_type=types[config.weights],
                    op_types_to_quantize=_quantized_ops(config),
                    nodes_to_exclude=_depthwise_convs(prepared) if config.float_depthwise else [],
                )
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - the quantizer raises many kinds
            text = str(exc).strip()
            first_line = text.splitlines()[0][:200] if text else type(exc).__name__
            raise ExportError(
                f"{fp32.name}: int8 quantization failed ({type(exc).__name__}: {first_line}); "
                "nothing was written"
            ) from exc


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` over the feeds, read once, in order."""

    def __init__(self, first: Mapping[str, Any], rest: Iterator[Mapping[str, Any]]):
        self._feeds = _chain(first, rest)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _chain(first: Mapping[str, Any], rest: Iterator[Mapping[str, Any]]) -> Iterator[dict]:
    yield dict(first)
    for feed in rest:
        yield dict(feed)


def _quantized_ops(config: Int8Config) -> list[str] | None:
    """The op types to quantize: ONNX Runtime's default list but ``float_ops`` (None: its
    default list itself)."""
    if not config.float_ops:
        return None
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    every = set(QDQRegistry) | set(QLinearOpsRegistry)  # quantize_static's own default
    return sorted(every - set(config.float_ops))


def _depthwise_convs(path: Path) -> list[str]:
    """Names of the convolutions with one group per input channel."""
    import onnx

    model = onnx.load(str(path))
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = shapes.get(node.input[1])
        if group > 1 and weight is not None and weight[1] == 1:  # (C_out, C_in / group, k, k)
            names.append(node.name)
    return names


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantization tools log advice and progress on the root logger; a
    command's output keeps to its own lines."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
