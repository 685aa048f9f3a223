"""Windows of long videos: the plan covers every frame, a window is viewed exactly as a video
of its own frames, each window decodes only the frames its views sample (one opened decoder
per video), PyAV seeks instead of decoding from the start, and a bad input is an error item."""

from __future__ import annotations

import shutil

import av
import numpy as np
import pytest
import torch
from odd_videos import SLOW_THEN_FAST_MS, write_vfr

from tsmcli.data import windows as windows_module
from tsmcli.data.decode import BACKENDS, PyAVVideo, open_video
from tsmcli.data.inputs import FRAMES, VIDEOS, FoundInput
from tsmcli.data.layout import FRAME_TEMPLATE
from tsmcli.data.sampling import sample_indices
from tsmcli.data.settings import ClipSize, Protocol, Reading
from tsmcli.data.windows import (
    WHOLE,
    InputClip,
    InputClipDataset,
    SeekingPyAV,
    Window,
    collate_with_errors,
    plan_windows,
    probe_timing,
    window_clips,
)
from tsmcli.errors import UsageError

CLIP = ClipSize(4, input_size=32, scale_size=40)
VIEWS = Protocol("test", clips=2, crops=3, twice_sample=True)


def inputs(items, backend: str = "decord") -> InputClipDataset:
    return InputClipDataset(items, clip=CLIP, views=VIEWS, reading=Reading(backend=backend))


def test_the_plan_covers_every_frame_and_ends_with_the_video():
    assert plan_windows(100, 10.0, 3.0, 1.0) == [Window(s, s + 30) for s in range(0, 71, 10)]
    assert plan_windows(95, 10.0, 3.0, 2.0) == [
        Window(0, 30),
        Window(20, 50),
        Window(40, 70),
        Window(60, 90),
        Window(65, 95),  # the last window on the stride ends at 90: one more ends with the video
    ]
    assert plan_windows(20, 10.0, 3.0, 1.0) == [Window(0, 20)]  # shorter than a window
    assert plan_windows(3, 10.0, 0.01, 0.01) == [Window(0, 1), Window(1, 2), Window(2, 3)]
    with pytest.raises(UsageError):
        plan_windows(10, 10.0, 0.0, 1.0)


def test_a_plan_by_frame_times_holds_the_frames_shown_in_each_window():
    slow_then_fast = [0.0, 0.5, 1.0, 1.5] + [2.0 + 0.1 * k for k in range(10)]  # ends at 3.0
    plan = plan_windows(14, 5.0, 1.0, 1.0, slow_then_fast)
    assert plan == [Window(0, 2), Window(2, 4), Window(4, 14)]
    assert [(w.begin, w.end) for w in plan] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    tail = plan_windows(14, 5.0, 1.0, 0.75, slow_then_fast)  # the stride ends at 2.5 s
    assert tail[-1] == Window(4, 14) and (tail[-1].begin, tail[-1].end) == (2.0, 3.0)
    assert all(a.begin < b.begin for a, b in zip(tail, tail[1:], strict=False))
    paused = plan_windows(4, 5.0, 1.0, 1.0, [0.0, 0.5, 3.0, 3.5])  # nothing from 1 to 3 s
    assert paused == [Window(0, 2), Window(2, 4)]
    assert [(w.begin, w.end) for w in paused] == [(0.0, 1.0), (3.0, 4.0)]
    short = plan_windows(3, 5.0, 2.0, 1.0, [0.0, 0.25, 1.0])
    assert short == [Window(0, 3)] and (short[0].begin, short[0].end) == (0.0, 1.75)
    with pytest.raises(ValueError, match="3 timestamps for 4 frames"):
        plan_windows(4, 5.0, 1.0, 1.0, [0.0, 1.0, 2.0])


def write_gop_video(path, num_frames, gop=8, size=40, fps=10):
    """H.264 with a key frame every ``gop`` frames and B-frames; frame k is grey 4k + noise."""
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(gop), "bf": "2", "crf": "10"}
        for k in range(num_frames):
            image = np.full((size, size, 3), (4 * k) % 256, dtype=np.int64)
            image = np.clip(image + rng.integers(0, 4, image.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_window_is_viewed_exactly_as_a_video_of_its_frames(tmp_path):
    from PIL import Image

    folder = tmp_path / "all"
    folder.mkdir()
    for k in range(30):
        level = np.full((24, 36, 3), 8 * k, dtype=np.uint8)
        Image.fromarray(level).save(folder / f"img_{k + 1:05d}.jpg", quality=95)
    window = tmp_path / "window"
    window.mkdir()
    for k in range(12):  # frames 9..20 of the folder, numbered from 1
        shutil.copy(folder / f"img_{k + 10:05d}.jpg", window / f"img_{k + 1:05d}.jpg")
    items = [
        InputClip(str(folder), 12, 0, FRAMES, 9, 30, 10.0),
        InputClip(str(window), WHOLE, 0, FRAMES),
    ]
    data = inputs(items)
    windowed, whole = data[0].clip, data[1].clip
    assert windowed.shape == (12, 4, 3, 32, 32)  # 2 clips x 2 (twice) x 3 crops
    assert torch.equal(windowed, whole)


class Counting:
    """A frame source that records what is asked of it."""

    def __init__(self, source, log):
        self.source, self.log, self.path = source, log, source.path
        log.append(("open", str(source.path)))

    @property
    def num_frames(self):
        return self.source.num_frames

    def get(self, indices):
        self.log.append(("get", str(self.path), list(indices)))
        return self.source.get(indices)


def test_each_window_decodes_only_its_frames_from_one_opened_decoder(
    tmp_path, make_video, monkeypatch
):
    long = make_video(tmp_path / "long.mp4", num_frames=60, size=32, fps=10)
    short = make_video(tmp_path / "short.mp4", num_frames=9, size=32)
    log = []
    monkeypatch.setattr(
        windows_module, "open_video", lambda path, backend: Counting(open_video(path, backend), log)
    )
    plan = plan_windows(60, 10.0, 2.0, 1.0)  # 5 windows of 20 frames
    items = [InputClip(str(long), w.num_frames, 0, VIDEOS, w.start, 60, 10.0) for w in plan]
    items.append(InputClip(str(short), WHOLE, 0, VIDEOS))
    data = inputs(items)
    clips = [data[i].clip for i in range(len(items))]
    assert all(c is not None for c in clips)

    expected = []
    for w in plan:
        sampled = sample_indices(20, 4, "test", None, clips=2, twice_sample=True)
        expected.append(("get", str(long), [w.start + int(i) for i in np.unique(sampled)]))
    whole = np.unique(sample_indices(9, 4, "test", None, clips=2, twice_sample=True))
    assert log == [
        ("open", str(long)),  # once for its 5 windows
        *expected,  # one read a window: its 16 sampled frames (4 segments x 2 clips x 2)
        ("open", str(short)),
        ("get", str(short), whole.tolist()),
    ]
    assert all(len(entry[2]) == 16 for entry in expected)


class CountingContainer:
    """A PyAV container that records the timestamp of every frame it decodes."""

    def __init__(self, container, decoded):
        self.container, self.decoded = container, decoded

    def seek(self, *args, **kwargs):
        return self.container.seek(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self.container.decode(*args, **kwargs):
            self.decoded.append(frame.pts)
            yield frame


def test_pyav_windows_seek_and_equal_decords(tmp_path):
    path = write_gop_video(tmp_path / "gop.mp4", num_frames=120, gop=8)
    count = PyAVVideo(path).num_frames
    plan = plan_windows(count, 10.0, 2.0, 1.5)
    items = [InputClip(str(path), w.num_frames, 0, VIDEOS, w.start, count, 10.0) for w in plan]
    pyav = inputs(items, "pyav")
    decord = inputs(items, "decord")
    for i in range(len(items)):
        assert torch.equal(pyav[i].clip, decord[i].clip)

    source = SeekingPyAV(path, count, 10.0)
    decoded = []
    source._container = CountingContainer(source._container, decoded)
    reference = PyAVVideo(path, count)
    for w in plan:
        wanted = [w.start, w.start + 7, w.stop - 1]
        before = len(decoded)
        assert torch.equal(source.get(wanted), reference.get(wanted))
        # from the key frame before the window (at most 7 frames back, and B-frame reordering)
        assert len(decoded) - before <= w.num_frames + 8 + 2


def test_an_unreadable_input_is_an_error_item_and_the_others_load(tmp_path, make_video):
    good = make_video(tmp_path / "good.mp4", num_frames=8, size=32)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    items = [InputClip(str(bad), WHOLE, 0, VIDEOS), InputClip(str(good), WHOLE, 0, VIDEOS)]
    data = inputs(items)
    batch, failed = collate_with_errors([data[0], data[1]])
    assert batch.indices.tolist() == [1] and batch.clips.shape[0] == 1
    ((index, error),) = failed
    assert index == 0 and error.startswith(f"{bad}: cannot open video (")


@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mkv"])
def test_a_variable_rate_video_is_windowed_by_its_frames_times(tmp_path, name):
    path = write_vfr(tmp_path / name, SLOW_THEN_FAST_MS)  # 4 fps for 2 s, then 16 fps for 2 s
    item = FoundInput(path, VIDEOS)
    timings = [probe_timing(item, backend, FRAME_TEMPLATE, 30.0) for backend in BACKENDS]
    for timing in timings:
        assert timing.num_frames == 40
        assert timing.times.tolist() == pytest.approx([ms / 1000 for ms in SLOW_THEN_FAST_MS])
    clips = window_clips(item, timings[0], window=1.0, stride=1.0)
    # a window of 1 s holds the frames shown in it: 4 of the slow ones, then 16 of the fast
    assert [(c.start, c.num_frames) for c in clips] == [(0, 4), (4, 4), (8, 16), (24, 16)]
    assert [(c.begin, c.end) for c in clips] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    assert all(c.total == 40 and c.times == clips[0].times for c in clips)

    pyav = inputs(clips, "pyav")
    decord = inputs(clips, "decord")
    for i in range(len(clips)):
        assert torch.equal(pyav[i].clip, decord[i].clip)
    seeking = SeekingPyAV(path, 40, timings[1].fps, timings[1].times)
    reference = PyAVVideo(path, 40)
    for wanted in ([9, 12, 23], [24, 30, 39], [2, 3]):
        assert torch.equal(seeking.get(wanted), reference.get(wanted))


def test_a_steady_video_keeps_its_frame_plan(tmp_path, make_video):
    path = make_video(tmp_path / "steady.mp4", num_frames=60, size=32, fps=10)
    item = FoundInput(path, VIDEOS)
    for backend in BACKENDS:
        timing = probe_timing(item, backend, FRAME_TEMPLATE, 30.0)
        assert (timing.num_frames, timing.fps, timing.times) == (60, 10.0, None)
        clips = window_clips(item, timing, window=2.0, stride=1.5)
        plan = plan_windows(60, 10.0, 2.0, 1.5)
        # the items predict made before frame times were read, and the times it reported
        assert [(c.start, c.num_frames, c.total, c.fps, c.times) for c in clips] == [
            (w.start, w.num_frames, 60, 10.0, None) for w in plan
        ]
        assert [(c.begin, c.end) for c in clips] == [(w.start / 10, w.stop / 10) for w in plan]
