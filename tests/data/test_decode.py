"""Frame sources: decord and PyAV agree, bad indices and missing frames name the file."""

from __future__ import annotations

import pytest
import torch
from torchvision.io import encode_jpeg

from tsmcli.data.decode import (
    DecordVideo,
    FrameFolder,
    PyAVVideo,
    count_frames,
    open_video,
    probe_video,
)
from tsmcli.errors import DataError


@pytest.mark.parametrize("size", [32, 64])  # 32: decord pads the rows (dmlc/decord#336)
def test_decord_and_pyav_decode_the_same_frames(tmp_path, make_video, size):
    path = make_video(tmp_path / "clip.mp4", num_frames=16, size=size)
    decord_video, pyav_video = open_video(path, "decord"), open_video(path, "pyav")
    assert decord_video.num_frames == pyav_video.num_frames == 16
    indices = [5, 0, 15, 5]
    a, b = decord_video.get(indices), pyav_video.get(indices)  # (4, 3, S, S)
    assert a.shape == b.shape == (4, 3, size, size) and a.dtype == torch.uint8
    assert (a.int() - b.int()).abs().max() <= 2
    levels = a.float().mean(dim=(1, 2, 3))
    assert torch.allclose(
        levels, torch.tensor([41.0, 1.0, 121.0, 41.0]), atol=2.0
    )  # grey 8k + noise


def test_pyav_given_the_count_decodes_the_same_frames_without_counting(
    tmp_path, make_video, monkeypatch
):
    import av

    path = make_video(tmp_path / "clip.mp4", num_frames=16, size=32)
    indices = [5, 0, 15, 5]
    counted = PyAVVideo(path)
    expected = counted.get(indices)
    opened = []
    real_open = av.open

    def counting_open(file, *args, **kwargs):
        opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting_open)
    video = open_video(path, "pyav", num_frames=16)
    assert video.num_frames == 16 and opened == []  # nothing read, let alone decoded
    assert torch.equal(video.get(indices), expected)
    assert opened == [str(path)]  # one pass, for the frames asked for
    assert video.fps == counted.fps == 8.0


def test_pyav_count_larger_than_the_video_names_the_file(tmp_path, make_video):
    path = make_video(tmp_path / "clip.mp4", num_frames=16)
    video = PyAVVideo(path, num_frames=20)  # a list that says 20
    assert video.get([3, 15]).shape == (2, 3, 32, 32)  # frames that exist are served
    with pytest.raises(
        DataError,
        match=rf"^{path}: frame 17 could not be decoded; the video ends after 16 frames, "
        "not the 20 given",
    ):
        video.get([2, 17])
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    corrupt = PyAVVideo(bad, num_frames=8)  # nothing is read until get
    with pytest.raises(DataError, match=rf"^{bad}: cannot open video"):
        corrupt.get([0])


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_frames_are_a_view_of_the_decoded_buffer(tmp_path, make_video, backend):
    video = open_video(make_video(tmp_path / "clip.mp4", num_frames=8, size=32), backend)
    frames = video.get([1, 6])  # (2, 3, 32, 32)
    assert frames.permute(0, 2, 3, 1).is_contiguous()  # (2, 32, 32, 3) as decoded, no copy
    assert torch.equal(frames.contiguous(), torch.stack([video.get([1])[0], video.get([6])[0]]))


@pytest.mark.parametrize("size", [32, 64])
def test_sequential_decode_matches_random_access(tmp_path, make_video, size):
    video = DecordVideo(make_video(tmp_path / "clip.mp4", num_frames=16, size=size))
    everything = video.get(range(16))
    batches = list(video.iter_frames(batch_size=6))
    assert [len(b) for b in batches] == [6, 6, 4]
    assert torch.equal(torch.cat(batches), everything)
    subset = torch.cat(list(video.iter_frames([3, 9, 10, 15], batch_size=16)))
    assert torch.equal(subset, everything[[3, 9, 10, 15]])


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_index_out_of_range_names_the_file(tmp_path, make_video, backend):
    path = make_video(tmp_path / "clip.mp4", num_frames=8)
    with pytest.raises(DataError, match=rf"^{path}: frame index 8 is outside 0\.\.7"):
        open_video(path, backend).get([0, 8])


def test_unreadable_video_and_unknown_backend_are_data_errors(tmp_path, make_video):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    for opener in (DecordVideo, PyAVVideo, probe_video):
        with pytest.raises(DataError, match=rf"^{bad}: "):
            opener(bad)
    with pytest.raises(DataError, match="unknown video backend"):
        open_video(make_video(tmp_path / "clip.mp4"), "opencv")


def test_probe_reports_the_container_frame_count(tmp_path, make_video):
    mp4 = probe_video(make_video(tmp_path / "clip.mp4", num_frames=16, size=32, fps=8))
    assert (mp4.num_frames, mp4.exact, mp4.fps, mp4.width, mp4.height) == (16, True, 8.0, 32, 32)
    mkv = probe_video(make_video(tmp_path / "clip.mkv", num_frames=16, fps=8))
    assert (mkv.num_frames, mkv.exact) == (16, False)  # from the duration


def _write_frames(folder, levels):
    folder.mkdir(parents=True, exist_ok=True)
    for k, level in enumerate(levels, start=1):
        image = torch.full((3, 16, 16), level, dtype=torch.uint8)
        (folder / f"img_{k:05d}.jpg").write_bytes(encode_jpeg(image, quality=95).numpy().tobytes())


def test_frame_folder_reads_jpegs_in_order(tmp_path):
    _write_frames(tmp_path / "clip", [10, 60, 110, 160])
    folder = FrameFolder(tmp_path / "clip")
    assert folder.num_frames == 4
    frames = folder.get([2, 0, 3])  # (3, 3, 16, 16)
    assert frames.shape == (3, 3, 16, 16)
    assert frames.float().mean(dim=(1, 2, 3)).round().tolist() == [110.0, 10.0, 160.0]


def test_missing_frame_names_the_frame_file(tmp_path):
    _write_frames(tmp_path / "clip", [10, 60, 110])
    folder = FrameFolder(tmp_path / "clip", num_frames=5)  # the list says 5 frames
    missing = tmp_path / "clip" / "img_00005.jpg"
    with pytest.raises(DataError, match=rf"^{missing}: frame is missing"):
        folder.get([0, 4])


def test_frame_of_another_size_names_the_frame_file(tmp_path):
    _write_frames(tmp_path / "clip", [10, 60, 110])
    odd = tmp_path / "clip" / "img_00003.jpg"
    odd.write_bytes(encode_jpeg(torch.zeros((3, 8, 16), dtype=torch.uint8)).numpy().tobytes())
    folder = FrameFolder(tmp_path / "clip")
    assert folder.get([1, 0]).shape == (2, 3, 16, 16)
    with pytest.raises(DataError, match=rf"^{odd}: frame is 16x8 but img_00001.jpg is 16x16"):
        folder.get([0, 2])


def test_count_frames_counts_the_consecutive_run_from_one(tmp_path):
    _write_frames(tmp_path / "clip", [1, 2, 3])
    _write_frames(tmp_path / "other", [1])
    (tmp_path / "other").rename(tmp_path / "clip" / "sub")
    (tmp_path / "clip" / "img_00005.jpg").write_bytes(b"")  # after a gap: not counted
    (tmp_path / "clip" / "notes.txt").write_text("x")
    assert count_frames(tmp_path / "clip") == 3
    assert count_frames(tmp_path / "clip" / "sub") == 1


def test_frame_folder_counts_with_its_own_template(tmp_path):
    _write_frames(tmp_path / "clip", [1, 2, 3])
    for k in (1, 2):
        (tmp_path / "clip" / f"{k:05d}.jpg").write_bytes(b"")
    assert FrameFolder(tmp_path / "clip").num_frames == 3
    assert FrameFolder(tmp_path / "clip", template="{:05d}.jpg").num_frames == 2


def test_a_template_without_a_field_is_refused_and_counting_it_cannot_loop(tmp_path, deadline):
    _write_frames(tmp_path / "clip", [1, 2, 3])
    message = (
        "frame template 'img_00001.jpg' is not a frame file name with one integer field "
        "(no {} field for the frame number); use e.g. 'img_{:05d}.jpg'"
    )
    with pytest.raises(DataError) as caught:
        FrameFolder(tmp_path / "clip", template="img_00001.jpg")
    assert str(caught.value) == message
    with deadline(30):  # every frame number names the same file: this used to never end
        assert count_frames(tmp_path / "clip", "img_00001.jpg") == 1
