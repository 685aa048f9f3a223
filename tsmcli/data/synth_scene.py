"""A synthetic video before it is encoded: its scene (textured background, drifting
distractors, a jittering camera, the main object whose motion is the class), its frames, and
where the main object is in each frame. ``data.synth`` writes them as a dataset.

The classes come in pairs whose second class is the first one played backwards
(``CLASS_PAIRS``): a scene is always drawn for the forward class, and reversed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tsmcli.errors import UsageError

CLASS_PAIRS: tuple[tuple[str, str], ...] = (
    ("moving_right", "moving_left"),
    ("moving_down", "moving_up"),
    ("growing", "shrinking"),
    ("rotating_clockwise", "rotating_counterclockwise"),
    ("appearing", "fading"),
)
CLASSES: tuple[str, ...] = tuple(name for pair in CLASS_PAIRS for name in pair)
_FORWARD = {backward: forward for forward, backward in CLASS_PAIRS}
DEFAULT_SIZE = 32
DEFAULT_NUM_FRAMES = 24
DEFAULT_SPEED = 1.0
_BLOB_SHAPES = ("disc", "square", "diamond")


@dataclass(frozen=True)
class Sprite:
    """A textured shape with a trajectory. Lengths in pixels, one row per frame."""

    shape: str  # "disc", "square", "diamond" or "bar" (pivots near one end, so its turn shows)
    centre: np.ndarray  # (T, 2) x, y in scene coordinates
    radius: np.ndarray  # (T,)
    angle: np.ndarray  # (T,) radians; increasing turns clockwise on screen (y points down)
    colours: np.ndarray  # (2, 3) the two stripe colours, 0-255
    stripes: np.ndarray  # (3,) cycles per radius, stripe orientation, phase
    opacity: np.ndarray | None = None  # (T,) in [0, 1]; None: opaque in every frame


@dataclass(frozen=True)
class Scene:
    """One video before rendering: the background, the camera path and the sprites."""

    base_colour: np.ndarray  # (3,)
    grating_freq: np.ndarray  # (K, 2) cycles per pixel along x, y
    grating_phase: np.ndarray  # (K,)
    grating_amp: np.ndarray  # (K, 3) per colour channel
    camera: np.ndarray  # (T, 2) offset of the view in scene coordinates
    sprites: tuple[Sprite, ...]  # drawn in order; the main object is last (on top)


def sample_scene(
    class_name: str,
    rng: np.random.Generator,
    size: int = DEFAULT_SIZE,
    num_frames: int = DEFAULT_NUM_FRAMES,
    speed: float = DEFAULT_SPEED,
) -> Scene:
    """Draw a scene whose main object does what ``class_name`` says when played forwards.

    For the second class of a pair this draws the first class's scene (``generate_frames``
    reverses it), so both classes of a pair consume ``rng`` identically. ``speed`` scales how
    far the main object moves, grows, turns or fades over the clip (1: the default set); the
    clutter is the same at every speed, and so are the draws from ``rng``.
    """
    kind = _FORWARD.get(class_name, class_name)
    if kind not in CLASSES:
        raise UsageError(
            f"unknown synthetic class {class_name!r}; choose one of {', '.join(CLASSES)}"
        )
    t = np.linspace(-0.5, 0.5, num_frames)[:, None]  # (T, 1) time, centred on the clip middle
    s = float(size)

    base = rng.uniform(50, 205, 3)
    k = 3
    orientation = rng.uniform(0, np.pi, k)
    freq = (
        rng.uniform(1.0, 5.0, k)[:, None]
        / s
        * np.stack([np.cos(orientation), np.sin(orientation)], 1)
    )
    phase = rng.uniform(0, 2 * np.pi, k)
    amp = rng.uniform(0, 15, (k, 3))

    steps = rng.normal(0, 0.005 * s, (num_frames, 2))
    camera = np.cumsum(steps, 0)
    camera = np.clip(camera - camera.mean(0), -0.06 * s, 0.06 * s)  # (T, 2), centred walk

    distractors = tuple(_distractor(rng, s, t) for _ in range(int(rng.integers(1, 3))))
    main = _main_object(kind, rng, s, t, base, speed)
    return Scene(base, freq, phase, amp, camera, (*distractors, main))


def _main_object(
    kind: str,
    rng: np.random.Generator,
    s: float,
    t: np.ndarray,
    background: np.ndarray,
    speed: float = DEFAULT_SPEED,
) -> Sprite:
    """The sprite whose motion defines the class (the forward class of its pair)."""
    colours, stripes = _texture(rng, background)
    ones = np.ones(len(t))
    if kind in ("moving_right", "moving_down"):
        radius = rng.uniform(0.14, 0.2) * s
        travel = min(rng.uniform(0.45, 0.6) * speed, 1.0 - 2 * radius / s) * s  # stays in view
        drift = rng.uniform(-0.08, 0.08) * s
        low, high = radius + travel / 2, s - radius - travel / 2  # equal at the cap
        along = rng.uniform(low, max(low, high))
        across = rng.uniform(radius + abs(drift) / 2, s - radius - abs(drift) / 2)
        x, y = along + travel * t[:, 0], across + drift * t[:, 0]
        centre = np.stack([x, y] if kind == "moving_right" else [y, x], 1)  # (T, 2)
        shape = _BLOB_SHAPES[int(rng.integers(len(_BLOB_SHAPES)))]
        return Sprite(
            shape, centre, radius * ones, rng.uniform(0, 2 * np.pi) * ones, colours, stripes
        )
    if kind == "growing":
        start = rng.uniform(0.08, 0.11) * s
        radius = start * rng.uniform(2.5, 3.2) ** (speed * (t[:, 0] + 0.5))  # geometric growth
        centre = _drifting_point(rng, s, t, margin=float(radius[-1]), drift=0.05 * s)
        shape = _BLOB_SHAPES[int(rng.integers(len(_BLOB_SHAPES)))]
        return Sprite(shape, centre, radius, rng.uniform(0, 2 * np.pi) * ones, colours, stripes)
    if kind == "appearing":  # a still object fading in: only its opacity changes
        radius = rng.uniform(0.16, 0.22) * s
        centre = _drifting_point(rng, s, t, margin=radius, drift=0.05 * s)
        shape = _BLOB_SHAPES[int(rng.integers(len(_BLOB_SHAPES)))]
        opacity = np.clip(0.5 + speed * t[:, 0], 0.0, 1.0)  # 0 -> 1 over the clip at speed 1
        angle = rng.uniform(0, 2 * np.pi) * ones
        return Sprite(shape, centre, radius * ones, angle, colours, stripes, opacity)
    # rotating_clockwise: a bar turning about a pivot near one end
    length = rng.uniform(0.32, 0.4) * s
    angle = rng.uniform(0, 2 * np.pi) + rng.uniform(1.0, 1.6) * np.pi * speed * t[:, 0]
    centre = _drifting_point(rng, s, t, margin=length, drift=0.04 * s)
    return Sprite("bar", centre, length * ones, angle, colours, stripes)


def _distractor(rng: np.random.Generator, s: float, t: np.ndarray) -> Sprite:
    """A small sprite drifting and spinning in a random direction: the same in every class,
    and its motion distribution is unchanged by playing the clip backwards."""
    heading = rng.uniform(0, 2 * np.pi)
    travel = rng.uniform(0, 0.3) * s
    middle = rng.uniform(0, s, 2)
    centre = middle + travel * t * np.array([np.cos(heading), np.sin(heading)])  # (T, 2)
    angle = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.5, 0.5) * np.pi * t[:, 0]
    radius = rng.uniform(0.03, 0.06) * s * np.ones(len(t))
    shape = _BLOB_SHAPES[int(rng.integers(len(_BLOB_SHAPES)))]
    colours = rng.uniform(0, 255, (2, 3))
    stripes = np.array([rng.uniform(0.5, 1.5), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)])
    return Sprite(shape, centre, radius, angle, colours, stripes)


def _drifting_point(
    rng: np.random.Generator, s: float, t: np.ndarray, margin: float, drift: float
) -> np.ndarray:
    """A centre that drifts a little in a random direction, staying ``margin`` inside."""
    velocity = rng.uniform(-drift, drift, 2)
    low = margin + np.abs(velocity) / 2
    middle = rng.uniform(low, np.maximum(low, s - low))
    return middle + velocity * t  # (T, 2)


def _texture(rng: np.random.Generator, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two stripe colours for the main object, the first far enough from the background
    colour that the object stands out."""
    first = rng.uniform(0, 255, 3)
    while np.abs(first - background).max() < 70:
        first = rng.uniform(0, 255, 3)
    second = np.clip(first + rng.uniform(-80, 80, 3), 0, 255)
    stripes = np.array([rng.uniform(0.5, 1.5), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)])
    return np.stack([first, second]), stripes


def render_scene(scene: Scene, size: int) -> np.ndarray:
    """Draw every frame of ``scene``: uint8 ``(T, size, size, 3)``, edges anti-aliased."""
    num_frames = len(scene.camera)
    x, y = _view(scene, size)
    image = np.broadcast_to(scene.base_colour, (num_frames, size, size, 3)).copy()  # (T, S, S, 3)
    for freq, phase, amp in zip(
        scene.grating_freq, scene.grating_phase, scene.grating_amp, strict=True
    ):
        wave = np.cos(2 * np.pi * (freq[0] * x + freq[1] * y) + phase)  # (T, S, S)
        image += wave[..., None] * amp
    for sprite in scene.sprites:
        u, v, radius = _object_coordinates(sprite, x, y)  # (T, S, S) each
        alpha = np.clip(0.5 - _signed_distance(sprite.shape, u, v) * radius, 0, 1)[..., None]
        if sprite.opacity is not None:
            alpha = alpha * sprite.opacity[:, None, None, None]  # (T, S, S, 1)
        cycles, orientation, phase = sprite.stripes
        stripe = 0.5 + 0.5 * np.cos(
            2 * np.pi * cycles * (u * np.cos(orientation) + v * np.sin(orientation)) + phase
        )
        colour = sprite.colours[0] + stripe[..., None] * (sprite.colours[1] - sprite.colours[0])
        image = image * (1 - alpha) + colour * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def object_boxes(scene: Scene, size: int) -> np.ndarray:
    """Where the main object is in each frame: ``(T, 4)`` pixel boxes ``x0, y0, x1, y1`` (the
    last row and column excluded) around the pixels whose centre it covers, whatever its
    opacity (so an appearing object's box is where it will show); ``-1`` in every field of a
    frame it is wholly out of view in."""
    x, y = _view(scene, size)
    u, v, _ = _object_coordinates(scene.sprites[-1], x, y)
    inside = _signed_distance(scene.sprites[-1].shape, u, v) <= 0  # (T, S, S) rows y, cols x
    boxes = np.full((len(inside), 4), -1, dtype=np.int64)
    for t, mask in enumerate(inside):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows):
            boxes[t] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def _view(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene coordinates of every pixel centre of every frame: x ``(T, 1, S)``, y ``(T, S, 1)``."""
    pixel = np.arange(size) + 0.5
    x = pixel[None, None, :] + scene.camera[:, 0, None, None]
    y = pixel[None, :, None] + scene.camera[:, 1, None, None]
    return x, y


def _object_coordinates(
    sprite: Sprite, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pixel in the sprite's own frame, in units of its radius: ``u``, ``v`` ``(T, S, S)``,
    and the radius ``(T, 1, 1)``."""
    dx = x - sprite.centre[:, 0, None, None]  # (T, 1, S)
    dy = y - sprite.centre[:, 1, None, None]  # (T, S, 1)
    cos = np.cos(sprite.angle)[:, None, None]
    sin = np.sin(sprite.angle)[:, None, None]
    radius = sprite.radius[:, None, None]
    return (cos * dx + sin * dy) / radius, (cos * dy - sin * dx) / radius, radius


def _signed_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Distance to the shape's edge in object units (negative inside)."""
    if shape == "disc":
        return np.hypot(u, v) - 1
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.9
    if shape == "diamond":
        return (np.abs(u) + np.abs(v) - 1.2) / np.sqrt(2)
    if shape == "bar":  # from u = -0.4 to u = 1.0 about the pivot at the origin
        return np.maximum(np.abs(v) - 0.25, np.abs(u - 0.3) - 0.7)
    raise ValueError(f"unknown shape {shape!r}")


def generate_clip(
    class_name: str,
    rng: np.random.Generator,
    size: int = DEFAULT_SIZE,
    num_frames: int = DEFAULT_NUM_FRAMES,
    speed: float = DEFAULT_SPEED,
) -> tuple[np.ndarray, np.ndarray]:
    """One video of ``class_name``: uint8 frames ``(T, size, size, 3)`` and the main object's
    box in each (``object_boxes``). The second class of a pair is the first class's video
    (same draws from ``rng``) with its frames, and boxes, reversed."""
    scene = sample_scene(class_name, rng, size, num_frames, speed)
    frames, boxes = render_scene(scene, size), object_boxes(scene, size)
    if class_name in _FORWARD:
        return frames[::-1].copy(), boxes[::-1].copy()
    return frames, boxes


def generate_frames(
    class_name: str,
    rng: np.random.Generator,
    size: int = DEFAULT_SIZE,
    num_frames: int = DEFAULT_NUM_FRAMES,
    speed: float = DEFAULT_SPEED,
) -> np.ndarray:
    """The frames of ``generate_clip``."""
    return generate_clip(class_name, rng, size, num_frames, speed)[0]
