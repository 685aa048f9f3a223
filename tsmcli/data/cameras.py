"""Cameras for ``tsm stream --camera``: how PyAV opens camera N, or a camera by name, on each
platform (one table, ``CAMERA_INPUTS``), resolved to the device ``data.live`` opens."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tsmcli.errors import DataError


@dataclass(frozen=True)
class CameraInput:
    """How PyAV opens camera N (or a camera by name) on one platform."""

    format: str  # FFmpeg input device
    by_index: str | None  # device name for an index ("{}" = the index); None: a name is needed
    by_name: str  # device name for a camera given by name ("{}" = the name)
    options: tuple[tuple[str, str], ...] = ()  # default input options


# sys.platform -> camera input. avfoundation's default 29.97 fps is refused by most Mac cameras
# ("Selected framerate is not supported"), so ask for 30; dshow only knows cameras by name.
CAMERA_INPUTS = {
    "linux": CameraInput("v4l2", "/dev/video{}", "{}"),
    "darwin": CameraInput("avfoundation", "{}:none", "{}:none", (("framerate", "30"),)),
    "win32": CameraInput("dshow", None, "video={}"),
}


@dataclass(frozen=True)
class CameraDevice:
    """A camera resolved for PyAV: ``av.open(device, format=format, options=options)``."""

    label: str  # how messages name it: "camera 0 (/dev/video0, v4l2)"
    format: str
    device: str
    options: dict[str, str]


def camera_device(camera: int | str, platform: str | None = None) -> CameraDevice:
    """The device of camera ``camera`` (an index, or a device name or path) on ``platform``
    (``sys.platform`` by default), read from ``CAMERA_INPUTS``."""
    platform = platform or sys.platform
    key = next((k for k in CAMERA_INPUTS if platform.startswith(k)), None)
    if key is None:
        raise DataError(
            f"camera {camera}: no camera input known on {platform} "
            f"(known: {', '.join(CAMERA_INPUTS)}); stream a URL or a file instead"
        )
    spec = CAMERA_INPUTS[key]
    if isinstance(camera, int) and spec.by_index is None:
        raise DataError(
            f"camera {camera}: {spec.format} opens cameras by name, not number; give the "
            f"camera's name (list them with: ffmpeg -list_devices true -f {spec.format} -i dummy)"
        )
    template = spec.by_index if isinstance(camera, int) else spec.by_name
    device = template.format(camera)
    label = f"camera {camera} ({device}, {spec.format})"
    return CameraDevice(label, spec.format, device, dict(spec.options))
