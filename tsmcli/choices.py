"""Every closed set of choices tsmcli offers, each named once.

The command line (``click.Choice``), the recipe's typed fields (``Literal[choices.X]``), the
model zoo's strict reads and the modules that act on a value all take the set from here, so
a new choice is a change in one place. This module imports nothing, so the CLI can quote it
without slowing ``tsm --help``.
"""

from __future__ import annotations

# the model
SHIFT_MODES = ("none", "bidirectional", "unidirectional")  # none: TSN; one-way: the online model
SHIFT_DIRECTIONS = ("bidirectional", "unidirectional")  # the modes that shift something
SHIFT_PLACES = ("blockres", "block")  # the residual branch's first conv, or the whole block
MODALITIES = ("rgb", "flow")  # what a segment is: one RGB frame, or stacked x/y optical flow
# The smallest shift_div: fold = C // shift_div channels move each way, and at 1 every channel
# moves, so none of a frame's own features stay in place. 2 is the least that keeps channels
# in place for the one-way shift (the bidirectional shift then moves both halves: allowed, as
# recipes always have, so that the checkpoints trained so still load). temporal_shift itself
# takes any fold_div >= 1, as the seed's code does.
MIN_SHIFT_DIV = 2

# videos on disk and how they are read
SOURCES = ("frames", "videos")  # what the paths of a list point at
BACKENDS = ("decord", "pyav")  # video decoders
LABEL_ORDERS = ("official", "sorted")  # a dataset's class order
CONFLICT_POLICIES = ("error", "first", "drop")  # tsm build-list: a clip with two labels
FLOW_METHODS = ("dis", "tvl1", "farneback")  # tsm extract --flow: OpenCV's optical flow methods

# training
SAMPLINGS = ("segments", "even", "dense")  # data.sampling
FLIP_MODES = ("off", "on", "swap")  # data.flip (swap: flip and swap left/right labels)
SAMPLERS = ("uniform", "balanced")  # data.sampler (balanced: every class drawn alike)
CLASS_WEIGHTS = ("none", "auto")  # train.class_weights (auto: inverse class frequency)
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
AMP_MODES = ("none", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")  # auto: CUDA when a GPU is visible

# testing
PROTOCOLS = ("single", "kinetics", "sthv2")  # test presets (engine.views.PROTOCOLS)
TEST_CROPS = (1, 3, 10)  # spatial crops per clip
AVERAGE_MODES = ("score", "prob")  # what is averaged over a video's views

# deployment: the number format a model runs in (bf16: PyTorch autocast where the hardware has
# it; int8: an ONNX model quantized with calibration), and those an export writes
PRECISIONS = ("fp32", "bf16", "int8")
EXPORT_PRECISIONS = ("fp32", "int8")

# tsm doctor: how much a finding matters, the worst first
SEVERITIES = ("error", "warning", "note")

# tsm explain: how a class activation map weighs a layer; tsm features: a row per clip or per
# segment, stored as
CAM_METHODS = ("gradcam", "gradcam++", "layercam", "inputxgrad", "intgrad")
FEATURE_LEVELS = ("clip", "frame")
FEATURE_DTYPES = ("float32", "float16")
