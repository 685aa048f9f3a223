"""Test-time views: the protocol presets, what a user asks for, and how a checkpoint's videos
are read. Typed settings that travel whole, as torchvision's video presets do.

- ``Protocol`` (``data.settings``, where the clip dataset takes it): how each video is viewed
  (clips x crops, full-res crops, twice-sampling, dense sampling) and how the scores of its
  views are combined. ``PROTOCOLS`` is the one table of presets.
- ``ViewRequest``: what was asked (a preset, or None for the checkpoint's default, and the
  fields to change); ``resolve`` turns it into the ``Protocol`` that is run, once.
- ``EvalData``: how the videos are read and sized, from the checkpoint's stored recipe
  (defaults without one) with ``--source`` / ``--backend`` applied, and what a segment is
  (the model's modality: RGB frames, or stacks of flow images from flow folders); it makes the
  dataset's ``Reading`` and ``ClipSize``.

Test protocols (presets; any explicit option overrides one field of the preset). The crop
sizes are those of a 224 recipe (``data.input_size`` 224, ``data.scale_size`` 256); other
recipes scale the same way. Each accuracy is the published top-1 of one official TSM
ResNet-50 8-frame checkpoint (named as in the model zoo, ``tsmcli.zoo``, which gives the
source of every number): a number belongs to a checkpoint and a protocol together.

=========  =====  =====  ======================================  ============================
protocol   clips  crops  views of a video                        published top-1 (checkpoint)
=========  =====  =====  ======================================  ============================
single     1      1      segment centres; short side 256,        K400 71.2, 72.8 with
                         centre 224                              crops=10 (tsm-k400-r50-8f:
                                                                 uniform, 50 epochs)
kinetics   10     3      dense (T frames, stride 64/T, 10        K400 74.1
                         starts); short side 256, three          (tsm-k400-r50-8f-dense:
                         256x256 crops (full res)                dense, 100 epochs)
sthv2      1 x2   3      segment centres + starts (twice-        SSv2 61.2
                         sample); short side 256, three          (tsm-sthv2-r50-8f)
                         256x256 crops (full res)
=========  =====  =====  ======================================  ============================

Views: single 1, kinetics 30, sthv2 6. Without a preset the protocol is ``single``, made
dense when the checkpoint's recipe trained with dense sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tsmcli.choices import AVERAGE_MODES, TEST_CROPS
from tsmcli.data.layout import FLOW_X_TEMPLATE, FRAME_TEMPLATE
from tsmcli.data.settings import ClipSize, Protocol, Reading
from tsmcli.errors import UsageError
from tsmcli.model.spec import ModelSpec
from tsmcli.recipe import DataConfig, Recipe
from tsmcli.view_request import ViewRequest

PROTOCOLS: dict[str, Protocol] = {
    "single": Protocol("single", clips=1, crops=1),
    "kinetics": Protocol("kinetics", clips=10, crops=3, full_res=True, dense=True),
    "sthv2": Protocol("sthv2", clips=1, crops=3, full_res=True, twice_sample=True),
}


def resolve_protocol(
    name: str | None = None,
    *,
    clips: int | None = None,
    crops: int | None = None,
    full_res: bool | None = None,
    twice_sample: bool | None = None,
    dense: bool | None = None,
    average: str | None = None,
) -> Protocol:
    """A preset (``single`` by default) with the explicitly given fields replaced.

    The name records what changed (``single (clips=2)``), so a JSON report never claims a
    preset that was not run.
    """
    base_name = name or "single"
    if base_name not in PROTOCOLS:
        raise UsageError(f"unknown protocol {base_name!r}; choose one of {', '.join(PROTOCOLS)}")
    base = PROTOCOLS[base_name]
    given = {
        "clips": clips,
        "crops": crops,
        "full_res": full_res,
        "twice_sample": twice_sample,
        "dense": dense,
        "average": average,
    }
    changes = {k: v for k, v in given.items() if v is not None and v != getattr(base, k)}
    if changes.get("clips", 1) < 1:
        raise UsageError(f"--clips must be at least 1, got {changes['clips']}")
    if changes.get("crops", 1) not in TEST_CROPS:
        raise UsageError(
            f"--crops must be one of {', '.join(map(str, TEST_CROPS))}, got {changes['crops']}"
        )
    if changes.get("average", "score") not in AVERAGE_MODES:
        raise UsageError(
            f"--average must be one of {', '.join(AVERAGE_MODES)}, got {changes['average']!r}"
        )
    if not changes:
        return base
    label = ", ".join(f"{k}={v}" for k, v in changes.items())
    return replace(base, name=f"{base.name} ({label})", **changes)


def resolve_views(request: ViewRequest, dense_training: bool = False) -> Protocol:
    """The protocol to run for ``request``. Without a preset or an explicit ``dense``, a
    checkpoint trained with dense sampling is tested with dense views."""
    given = request.overrides()
    if request.preset is None and "dense" not in given and dense_training:
        given["dense"] = True
    return resolve_protocol(request.preset, **given)


Views = ViewRequest | Protocol | str | None  # what a caller may give as the views


def view_request(views: Views) -> ViewRequest | Protocol:
    """``views`` as a request (checked now: a bad option fails before any work) or a protocol."""
    if isinstance(views, Protocol):
        return views
    request = views if isinstance(views, ViewRequest) else ViewRequest(preset=views)
    resolve_views(request)
    return request


@dataclass(frozen=True)
class EvalData:
    """How eval reads and sizes a checkpoint's videos."""

    source: str | None  # frames or videos; None: detected from the list (no recipe, no option)
    backend: str
    frame_template: str
    input_size: int
    scale_size: int
    dense_training: bool
    modality: str = "rgb"  # flow: stacks of new_length x/y flow images a segment
    new_length: int = 1

    @classmethod
    def from_recipe(
        cls, recipe: Recipe | None, *, source: str | None = None, backend: str | None = None
    ) -> EvalData:
        """The stored recipe's data settings (the defaults, and no source, without one), with
        the ``source`` and ``backend`` given by the caller in their place."""
        data = recipe.data if recipe is not None else DataConfig()
        return cls(
            source=source or (data.source if recipe is not None else None),
            backend=backend or data.backend,
            frame_template=data.frame_template,
            input_size=data.input_size,
            scale_size=data.scale_size,
            dense_training=data.sampling == "dense",
            modality=recipe.model.modality if recipe is not None else "rgb",
            new_length=recipe.model.new_length if recipe is not None else 1,
        )

    def for_model(self, spec: ModelSpec) -> EvalData:
        """These settings for a model of ``spec``: its modality and stack length (what a
        checkpoint without a recipe, an official flow file, says only through its weights),
        and a flow folder's template when no recipe named one."""
        template = self.frame_template
        if spec.modality == "flow" and template == FRAME_TEMPLATE:
            template = FLOW_X_TEMPLATE
        return replace(
            self,
            modality=spec.modality,
            new_length=int(spec.new_length or 1),
            frame_template=template,
        )

    def reading(self, source: str) -> Reading:
        """How the dataset of eval or predict reads ``source`` (frames or videos): the one
        place where they get their decoder."""
        return Reading(
            source=source,
            backend=self.backend,
            frame_template=self.frame_template,
            modality=self.modality,
            new_length=self.new_length,
        )

    def clip(self, num_segments: int) -> ClipSize:
        """The clip of a ``num_segments`` model: the one place where eval and predict get their
        sizes."""
        return ClipSize(num_segments, self.input_size, self.scale_size)
