"""How clips lie on disk: frame folders of numbered images, or video files.

A frame folder holds ``img_00001.jpg``, ``img_00002.jpg``, ... (1-based, as in the official TSM
code and mmaction2's rawframes); a video is a file with one of ``VIDEO_EXTENSIONS``. A list
file's paths point at one kind or the other (its ``source``). These rules are written once,
here, and this module imports neither torch nor a decoder, so the CLI can quote them in its
help without slowing ``tsm --help``.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path

from tsmcli.choices import SOURCES
from tsmcli.errors import DataError, TSMError, UsageError

FRAME_TEMPLATE = "img_{:05d}.jpg"
# Optical flow frames, one grayscale image each for x and y, 1-based like the RGB frames: the
# names dense_flow writes and the official TSM ops/dataset.py reads ('flow_{}_{:05d}.jpg',
# its UCF101/HMDB51 layout). A flow folder's frame template names the x images.
FLOW_X_TEMPLATE = "flow_x_{:05d}.jpg"
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
_INTEGER_SPEC = re.compile(r"0?\d*d?")  # format specs of a plain integer: "", "d", "5d", "05d"


def check_source(source: str) -> str:
    """Return ``source`` if it is one of ``SOURCES``; otherwise a ``UsageError``."""
    if source not in SOURCES:
        raise UsageError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def is_video(path: Path) -> bool:
    """Whether ``path`` is named like a video file (by its extension, in any case)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def check_frame_template(
    template: str, what: str = "frame template", error: type[TSMError] = DataError
) -> str:
    """Return ``template`` if it names the frame files of a folder by one integer field
    (``img_{:05d}.jpg``); otherwise raise ``error``, naming ``what`` (``--template``,
    ``data.frame_template``) and the fault. The one check of every template that comes in:
    a template without a field names every frame alike, and counting frames never ends."""
    problem = _template_problem(template)
    if problem is not None:
        raise error(
            f"{what} {template!r} is not a frame file name with one integer field ({problem}); "
            f"use e.g. {FRAME_TEMPLATE!r}"
        )
    return template


def _template_problem(template: str) -> str | None:
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"not a format string: {exc}"
    fields = [(name, spec, conv) for _, name, spec, conv in parts if name is not None]
    if not fields:
        return "no {} field for the frame number"
    if len(fields) > 1:
        return f"{len(fields)} fields"
    name, spec, conv = fields[0]
    if name not in ("", "0") or conv is not None or not _INTEGER_SPEC.fullmatch(spec):
        text = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        return f"the field {text} is not a plain integer field such as {{:05d}}"
    if any(sep in template for sep in ("/", os.sep, os.altsep) if sep):
        return "a path separator; frames sit directly in their folder"
    return None


def flow_y_template(
    x_template: str, what: str = "flow frame template", error: type[TSMError] = UsageError
) -> str:
    """The template of the y images of a flow folder whose x images ``x_template`` names:
    its one ``x`` outside the number field made ``y`` (``flow_x_{:05d}.jpg`` ->
    ``flow_y_{:05d}.jpg``). A template with no such ``x``, or several, names no y images:
    an ``error`` naming ``what``."""
    check_frame_template(x_template, what, error)
    head, brace, rest = x_template.partition("{")
    field, close, tail = rest.partition("}")
    if head.count("x") + tail.count("x") != 1:
        raise error(
            f"{what} {x_template!r} does not name flow x images (one 'x' outside the number "
            f"field, which the y images have as 'y'); use {FLOW_X_TEMPLATE!r}, as tsm extract "
            "--flow writes"
        )
    if "x" in head:
        return head.replace("x", "y") + brace + field + close + tail
    return head + brace + field + close + tail.replace("x", "y")
