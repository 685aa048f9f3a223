"""Tiny models and clips for the int8 tests: a random ResNet-18 checkpoint, textured frame
folders it tells apart, and quantizers that stand in for a broken one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from PIL import Image

from tsmcli.model.checkpoint import checkpoint_dict
from tsmcli.model.streaming import StreamingTSM, run_stream
from tsmcli.model.tsn import build_model
from tsmcli.model.weights import save_checkpoint
from tsmcli.recipe import DataConfig, ModelConfig, Recipe

SIZE = 32
CLASSES = ["red", "green", "blue"]


def write_checkpoint(
    path: Path,
    clips: Path,
    list_file: Path,
    shift: str = "unidirectional",
    seed: int = 0,
    scale_size: int = SIZE,
) -> Path:
    """A tiny ResNet-18 in our format (4 segments, 32 px crops of frames scaled to
    ``scale_size``, reading frame folders): random
    backbone, and a head fitted by least squares to the list's clips, so that its classes are
    well apart on them (a random head puts every clip near the same scores, where any
    rounding flips the top-1)."""
    torch.manual_seed(seed)
    model = build_model("resnet18", num_classes=len(CLASSES), num_segments=4, shift=shift)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.0)
    _fit_head(model.eval(), clips, list_file, scale_size)
    recipe = Recipe(
        name="tiny",
        model=ModelConfig(arch="resnet18", num_classes=len(CLASSES), num_segments=4, shift=shift),
        data=DataConfig(input_size=SIZE, scale_size=scale_size, source="frames"),
    )
    save_checkpoint(checkpoint_dict(model, recipe=recipe.to_dict(), classes=CLASSES), path)
    return path


def _fit_head(model, clips: Path, list_file: Path, scale_size: int) -> None:
    """``new_fc`` mapping each clip's mean frame feature to scores 4 apart per class: the
    one-way model's over every frame streamed, the offline model's over eval's centre clip."""
    from tsmcli.data import transforms
    from tsmcli.data.decode import FrameFolder
    from tsmcli.data.lists import read_list
    from tsmcli.data.sampling import val_segment_indices

    entries = read_list(list_file)
    streaming = StreamingTSM(model).eval()  # the frames as streamed: one-way, from the past
    features = []
    for entry in entries:
        frames = FrameFolder(clips / entry.path, entry.num_frames).get(range(entry.num_frames))
        views = transforms.normalize(
            transforms.eval_views(frames, input_size=SIZE, scale_size=scale_size)[0]
        )  # (F, 3, S, S)
        with torch.no_grad():
            if model.shift == "unidirectional":
                buffers = streaming.initial_buffers(SIZE, SIZE)
                per_frame = run_stream(streaming.forward_features, views, buffers).outputs
            else:
                centres = val_segment_indices(entry.num_frames, model.num_segments)
                per_frame = model.features(views[list(centres)][None])[0]  # (T, D)
        features.append(per_frame.mean(0))  # (D,)
    x = torch.stack(features).double()  # (N, D)
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    target = torch.full((len(entries), len(CLASSES)), -2.0, dtype=x.dtype)
    target[torch.arange(len(entries)), torch.tensor([e.label for e in entries])] = 2.0
    solution = torch.linalg.lstsq(x, target).solution  # (D + 1, K)
    with torch.no_grad():
        model.new_fc.weight.copy_(solution[:-1].T.float())
        model.new_fc.bias.copy_(solution[-1].float())


def write_clips(root: Path, count: int, frames: int = 6, labels=None) -> Path:
    """``count`` frame folders of blocky random colour textures drifting a pixel a frame
    (seeded per clip), and their list (labels ``labels`` or clip index mod 3)."""
    lines = []
    for clip in range(count):
        rng = np.random.default_rng(clip)
        blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        texture = np.kron(blocks, np.ones((6, 6, 1), dtype=np.uint8))  # (48, 48, 3)
        folder = root / f"clip{clip:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(frames):
            image = np.roll(texture, k, axis=1)[4:44, 4:44]  # (40, 40, 3)
            Image.fromarray(image).save(folder / f"img_{k + 1:05d}.jpg", quality=95)
        label = clip % 3 if labels is None else labels[clip]
        lines.append(f"clip{clip:02d} {frames} {label}\n")
    list_file = root / "list.txt"
    list_file.write_text("".join(lines))
    return list_file


def _head(model: onnx.ModelProto):
    """The classifier's weight and bias initializers, and whether the weight is (D, K): the
    last Gemm (weight (K, D)), or the last MatMul (weight (D, K)) and the Add after it."""
    found = {t.name: t for t in model.graph.initializer}
    last = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    if last.op_type == "Gemm":
        return found[last.input[1]], found[last.input[2]], False
    add = next(n for n in model.graph.node if n.op_type == "Add" and last.output[0] in n.input)
    bias = next(name for name in add.input if name in found)
    return found[last.input[1]], found[bias], True


def _rewrite_head(fp32: Path, out: Path, change) -> None:
    """``out``: ``fp32`` with its classifier's (K, D) weight and (K,) bias changed."""
    model = onnx.load(str(fp32))
    weight, bias, transposed = _head(model)
    w = numpy_helper.to_array(weight).copy()
    w, b = change(w.T if transposed else w, numpy_helper.to_array(bias).copy())
    w = np.ascontiguousarray(w.T if transposed else w)
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    onnx.save(model, str(out))


def collapsed_quantizer(fp32: Path, out: Path, feeds, *args, **kwargs) -> None:
    """A quantizer that lost the signal: its model gives class 0 whatever the input."""
    for _ in feeds:  # consumed as the real one consumes them
        pass

    def constant(w, b):
        b[:] = 0.0
        b[0] = 5.0
        return np.zeros_like(w), b

    _rewrite_head(fp32, out, constant)


def swapping_quantizer(fp32: Path, out: Path, feeds, *args, **kwargs) -> None:
    """A quantizer whose model confuses classes 0 and 1 (and still tells classes apart)."""
    for _ in feeds:
        pass

    def swap(w, b):
        return w[[1, 0, *range(2, len(w))]], b[[1, 0, *range(2, len(b))]]

    _rewrite_head(fp32, out, swap)


def copying_quantizer(fp32: Path, out: Path, feeds, *args, **kwargs) -> None:
    """The fp32 model itself: what a perfect quantizer would keep (fast, for file tests)."""
    for _ in feeds:
        pass
    shutil.copyfile(fp32, out)
