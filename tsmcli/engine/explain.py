"""``tsm explain``: where in each frame a model looks for the class it predicts (Grad-CAM).

Grad-CAM weighs a layer's activation maps by the gradient of the class score with respect
to them (averaged over each map), sums them and keeps the positive part. For TSM the whole
clip goes through one forward and one backward pass: the temporal shift mixes each frame's
features with its neighbours', so a frame's map depends on the other frames, and a map
computed frame by frame (as a 2D explainer would) is not the model's. The maps of a clip
share one scale (the clip's largest value is 1), so frames can be compared.

Grad-CAM++ and LayerCAM weigh a layer's maps otherwise; input x gradient and integrated
gradients need no layer and map the pixels themselves, which suits frames too small for a
deep layer's maps to say where. What each finds on the demo, and which of them still depend on
the trained layers above the one they read, is measured in ``bench/explain.py``.

Inputs are read, sampled and cropped as ``tsm eval`` reads them in its ``single`` view (the
segment centres, the centre crop): the map of frame t is over the crop the model saw.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tsmcli.choices import CAM_METHODS
from tsmcli.data.inputs import FRAMES, VIDEOS, FoundInput, find_inputs
from tsmcli.engine.evaluate import checkpoint_file, load_for_eval
from tsmcli.engine.views import PROTOCOLS, EvalData
from tsmcli.errors import DataError, UsageError
from tsmcli.fileio import Output, check_outputs, check_writable_dir
from tsmcli.model.checkpoint import CheckpointInfo
from tsmcli.model.spec import ArchOverrides

log = logging.getLogger(__name__)

# The convolutional stages of each backbone family, deepest first, with their output stride.
# The default layer is the deepest stage whose maps are still at least MIN_MAP pixels a side:
# the last stage at 224 px (7x7 maps), but a 32 px frame leaves it 1x1, a single value that
# says nothing about where (layer2's 4x4 then).
STAGES = {
    "resnet": (
        ("base_model.layer4", 32),
        ("base_model.layer3", 16),
        ("base_model.layer2", 8),
        ("base_model.layer1", 4),
    ),
    "mobilenet_v2": (("base_model.features", 32),),
}
MIN_MAP = 4
METHODS = CAM_METHODS
# methods that map the input pixels (no layer), and the path steps each integrates over
PIXEL_METHODS = {"inputxgrad": 0, "intgrad": 16}
LAYER_METHODS = tuple(m for m in METHODS if m not in PIXEL_METHODS)
BLUR = 1.0  # pixels: the Gaussian that smooths an input-level map
OUTPUT_SUFFIXES = (".png", ".gif", ".npy")


@dataclass(frozen=True)
class Explanation:
    """One input's maps: frame t of ``frames`` (uint8 ``(T, S, S, 3)``, what the model saw)
    and its map ``maps[t]`` (``(T, S, S)`` in [0, 1]) for class ``label``."""

    path: Path
    label: int
    name: str
    probability: float  # the model's softmax probability of ``label`` on this clip
    frame_indices: tuple[int, ...]  # the 0-based source frames sampled
    maps: np.ndarray = field(repr=False)
    frames: np.ndarray = field(repr=False)
    written: tuple[Path, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class ExplainResult:
    explanations: list[Explanation]
    checkpoint: str
    layer: str


def grad_cam(
    model: nn.Module, clip: Tensor, layer: nn.Module, target: int | None, method: str = "gradcam"
) -> tuple:
    """The class activation maps of ``target`` (None: the top-1 class) for a normalised clip
    ``(1, T, 3, H, W)`` through ``model`` at ``layer`` (which sees the T frames as a batch):
    the maps ``(T, h, w)`` at the layer's resolution, scaled so the clip's largest is 1, the
    class, and the logits. ``gradcam`` weighs each channel by its gradient averaged over the
    frame; ``gradcam++`` by the positive gradients weighted by the closed-form coefficients of
    Grad-CAM++ (Chattopadhay et al.), which favour the places that raise the class score;
    ``layercam`` weighs each position by its own positive gradient (LayerCAM), which keeps
    more of where at shallow layers."""
    store: dict[str, Tensor] = {}

    def keep(_module, _inputs, output: Tensor) -> None:
        output.retain_grad()
        store["activation"] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(clip)  # (1, K)
            label = int(logits[0].argmax()) if target is None else target
            model.zero_grad(set_to_none=True)
            logits[0, label].backward()
    finally:
        handle.remove()
    activation = store["activation"]  # (T, C, h, w)
    gradient = activation.grad
    if method == "layercam":
        weights = torch.relu(gradient)  # (T, C, h, w)
    elif method == "gradcam++":
        # alpha = g^2 / (2 g^2 + sum(A) g^3), the score's exponential cancelled; 0 where the
        # denominator is (no gradient there)
        square, total = gradient.pow(2), activation.detach().sum(dim=(2, 3), keepdim=True)
        denominator = 2 * square + total * gradient.pow(3)
        alpha = torch.where(denominator != 0, square / denominator, torch.zeros_like(square))
        weights = (alpha * torch.relu(gradient)).sum(dim=(2, 3), keepdim=True)  # (T, C, 1, 1)
    else:
        weights = gradient.mean(dim=(2, 3), keepdim=True)  # (T, C, 1, 1): per frame
    maps = torch.relu((weights * activation).sum(dim=1)).detach()  # (T, h, w)
    peak = maps.max()
    return (maps / peak if peak > 0 else maps), label, logits.detach()


def pixel_map(
    model: nn.Module, clip: Tensor, target: int | None, steps: int = 0, blur: float = BLUR
) -> tuple[Tensor, int, Tensor]:
    """Where the pixels of a normalised clip ``(1, T, 3, S, S)`` push the score of ``target``
    (None: the top-1 class): the magnitude of ``pixel_attributions`` summed over the colours,
    smoothed by a Gaussian of ``blur`` pixels (a single pixel's value is noisy at small
    sizes). The maps ``(T, S, S)`` scaled so the clip's largest is 1, the class, and the
    logits; each pass takes the whole clip, as ``grad_cam``."""
    attributions, label, logits = pixel_attributions(model, clip, target, steps)
    maps = attributions[0].sum(dim=1).abs()  # (T, S, S)
    if blur > 0:
        maps = _gaussian_blur(maps, blur)
    peak = maps.max()
    return (maps / peak if peak > 0 else maps), label, logits


def pixel_attributions(
    model: nn.Module, clip: Tensor, target: int | None, steps: int = 0
) -> tuple[Tensor, int, Tensor]:
    """Each input value's share of the score of ``target`` (None: the top-1 class), with the
    class and the clip's logits. ``steps`` 0: the input times its gradient. Otherwise
    integrated gradients (Sundararajan et al.): the input's difference from a baseline of
    zeros (after normalisation, the data's mean colour) times the gradient averaged along the
    straight path between them, by the trapezoid rule over ``steps`` intervals, so the shares
    add up to the score's rise from the baseline to within the rule's error."""
    if steps < 0:
        raise ValueError(f"steps must be 0 or more, got {steps}")
    # the path's points, the clip first, with their trapezoid weights
    if steps == 0:
        points, shares = [1.0], [1.0]
    else:
        points = [k / steps for k in range(steps, -1, -1)]
        shares = [(0.5 if k in (0, steps) else 1.0) / steps for k in range(steps, -1, -1)]
    total = torch.zeros_like(clip)
    logits, label = None, target
    for alpha, share in zip(points, shares, strict=True):
        point = (clip.detach() * alpha).requires_grad_(True)
        with torch.enable_grad():
            scores = model(point)  # (1, K)
            if logits is None:
                logits = scores.detach()
                label = int(logits[0].argmax()) if target is None else target
            (gradient,) = torch.autograd.grad(scores[0, label], point)
        total += gradient * share
    return clip.detach() * total, int(label), logits


def _gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """``maps`` ``(T, H, W)`` through a separable Gaussian of ``sigma`` pixels (3 sigma
    either side), edges repeated."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = maps[:, None]  # (T, 1, H, W)
    x = nn.functional.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = nn.functional.conv2d(x, kernel.view(1, 1, 1, -1))
    x = nn.functional.pad(x, (0, 0, radius, radius), mode="replicate")
    return nn.functional.conv2d(x, kernel.view(1, 1, -1, 1))[:, 0]


def explain(
    inputs: Sequence[str | Path],
    checkpoint: str | Path | CheckpointInfo,
    *,
    target: str | int | None = None,
    layer: str | None = None,
    method: str = "gradcam",
    out_dir: str | Path | None = None,
    arch: ArchOverrides | None = None,
    backend: str | None = None,
    overwrite: bool = False,
) -> ExplainResult:
    """Grad-CAM maps of each input (a video, a frame folder, or a folder searched for them)
    for ``target`` (a class name or index; None: each input's top-1), at ``layer`` (a module
    path such as ``base_model.layer3``; None: the last convolutional stage) by ``method``
    (``gradcam``, ``gradcam++`` or ``layercam``: see ``grad_cam``; ``inputxgrad`` or
    ``intgrad``, integrated gradients, which take no layer: see ``pixel_map``). With
    ``out_dir``,
    each input gets ``<name>.png`` (the frames with their maps), ``<name>.gif`` (the same,
    animated) and ``<name>.npy`` (the maps, ``(T, S, S)`` float32), checked before any work."""
    model, data, classes, path = load_for_eval(checkpoint, arch or ArchOverrides(), None, backend)
    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    model.eval()
    names = list(classes) if classes else [str(k) for k in range(int(model.num_classes))]
    wanted = _target(target, names)
    if method in PIXEL_METHODS:
        if layer is not None:
            raise UsageError(
                f"--method {method} maps the input pixels, not a layer; leave out --layer "
                f"{layer}, or choose a layer's method ({', '.join(LAYER_METHODS)})"
            )
        layer_name, module = "input", None
    else:
        layer_name = layer or default_layer(model.backbone.family, data.input_size)
        module = _module(model, layer_name)
    found = find_inputs(inputs, data.frame_template)
    stems = _stems(found)
    if out_dir is not None:
        check_writable_dir(out_dir, "--out")
        files = [Output("--out", Path(out_dir) / f"{s}{x}") for s in stems for x in OUTPUT_SUFFIXES]
        check_outputs(files, [checkpoint_file(checkpoint), *inputs], overwrite=overwrite)
    explanations = []
    log.info("explaining with %s at %s", method, layer_name)
    for item, stem in zip(found, stems, strict=True):
        explanation = _explain_one(model, module, item, data, wanted, names, method)
        if out_dir is not None and explanation.error is None:
            explanation = _write(explanation, Path(out_dir), stem)
        explanations.append(explanation)
    return ExplainResult(explanations, str(path), layer_name)


def _explain_one(
    model, module, item: FoundInput, data: EvalData, target, names, method
) -> Explanation:
    """One input: its single eval view through ``grad_cam``; a bad input is its error."""
    empty = np.zeros((0,), dtype=np.float32)
    if item.error is not None:
        return Explanation(item.path, -1, "", 0.0, (), empty, empty, error=item.error)
    try:
        frames, indices = _view(item, data, int(model.num_segments))
    except DataError as exc:
        return Explanation(item.path, -1, "", 0.0, (), empty, empty, error=str(exc))
    from tsmcli.data import transforms

    clip = transforms.normalize(frames)[None]  # (1, T, 3, S, S)
    if module is None:
        maps, label, logits = pixel_map(model, clip, target, PIXEL_METHODS[method])
    else:
        maps, label, logits = grad_cam(model, clip, module, target, method)
    size = frames.shape[-2:]
    full = nn.functional.interpolate(maps[:, None], size=size, mode="bilinear")[:, 0]  # (T, S, S)
    probability = float(logits[0].softmax(0)[label])
    pixels = frames.permute(0, 2, 3, 1).contiguous().numpy()  # (T, S, S, 3) uint8
    return Explanation(item.path, label, names[label], probability, indices, full.numpy(), pixels)


def _view(item: FoundInput, data: EvalData, num_segments: int) -> tuple[Tensor, tuple[int, ...]]:
    """The uint8 frames ``(T, 3, S, S)`` of ``tsm eval``'s single view of ``item``, and the
    source frames they are."""
    from tsmcli.data.decode import FrameFolder, open_video
    from tsmcli.data.sampling import val_segment_indices
    from tsmcli.data.windows import WHOLE, InputClip, InputClipDataset

    dataset = InputClipDataset(
        [InputClip(str(item.path), WHOLE, 0, item.source)],
        clip=data.clip(num_segments),
        views=PROTOCOLS["single"],
        reading=data.reading(VIDEOS),
    )
    sample = dataset[0]
    if sample.error is not None:
        raise DataError(sample.error)
    frames = sample.clip[0]  # (T, 3, S, S)
    source = (
        FrameFolder(item.path, None, data.frame_template)
        if item.source == FRAMES
        else open_video(item.path, data.backend)
    )
    picked = val_segment_indices(source.num_frames, num_segments)
    return frames, tuple(int(i) for i in picked)


def default_layer(family: str, input_size: int) -> str:
    """The deepest stage of ``family`` whose maps are at least ``MIN_MAP`` a side at
    ``input_size`` (the shallowest listed when none is)."""
    stages = STAGES.get(family, ())
    for name, stride in stages:
        if input_size // stride >= MIN_MAP:
            return name
    return stages[-1][0] if stages else ""


def _target(target: str | int | None, names: Sequence[str]) -> int | None:
    if target is None:
        return None
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        index = int(target)
        if 0 <= index < len(names):
            return index
    elif target in names:
        return names.index(target)
    raise UsageError(
        f"--class {target!r} is not a class of this model; give one of its names "
        f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}) or a number below "
        f"{len(names)}"
    )


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise UsageError(
            f"--layer {name!r} is not a module of this model; give a module path such as "
            f"base_model.layer4, or a convolution ({convs[-1] if convs else 'none found'})"
        )
    return modules[name]


def _stems(found: Sequence[FoundInput]) -> list[str]:
    """A file name stem per input, unique: the input's name, numbered when names repeat."""
    stems, seen = [], {}
    for item in found:
        stem = item.path.stem if item.source == VIDEOS else item.path.name
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def _write(explanation: Explanation, out_dir: Path, stem: str) -> Explanation:
    """The strip, the animation and the raw maps of one input."""
    from dataclasses import replace

    from tsmcli.engine.plots import heat_animation, heat_strip
    from tsmcli.fileio import atomic_write_with

    title = f"{explanation.path}: {explanation.name} ({explanation.probability:.3f})"
    labels = [f"frame {index + 1}" for index in explanation.frame_indices]  # as img_%05d counts
    strip = heat_strip(explanation.frames, explanation.maps, title, out_dir / f"{stem}.png", labels)
    gif = heat_animation(explanation.frames, explanation.maps, out_dir / f"{stem}.gif")
    raw = atomic_write_with(
        out_dir / f"{stem}.npy", lambda h: np.save(h, explanation.maps.astype(np.float32))
    )
    return replace(explanation, written=(strip, gif, raw))
