"""VideoClipDataset: shapes per mode, the frames it samples (read back from the pixels),
determinism across DataLoader workers and epochs, bad data, the pre-flight check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.io import encode_jpeg

from tsmcli.data.dataset import (
    ClipBatch,
    Sample,
    VideoClipDataset,
    collate_clips,
)
from tsmcli.data.decode import open_video
from tsmcli.data.lists import (
    ListEntry,
    find_missing,
    read_list,
    read_list_file,
    write_classes,
    write_list,
)
from tsmcli.data.settings import Augmentation, ClipSize, Protocol, Reading
from tsmcli.data.transforms import jitter_colour, multiscale_crop_sizes, normalize, resize_crop
from tsmcli.errors import DataError, UsageError

NUM_FRAMES = 16  # make_video: frame k is a flat grey of level 8 * k


@pytest.fixture
def tiny(tmp_path, make_video) -> Path:
    """3 videos of 16 frames (32x32), their JPEG frames, and list files for both."""
    videos, frames = tmp_path / "videos", tmp_path / "frames"
    entries_v, entries_f = [], []
    for i in range(3):
        video = make_video(videos / f"v{i}.mp4", num_frames=NUM_FRAMES, size=32, seed=i)
        decoded = open_video(video, "decord").get(range(NUM_FRAMES))  # (N, 3, 32, 32)
        (frames / f"v{i}").mkdir(parents=True)
        for k, frame in enumerate(decoded, start=1):
            (frames / f"v{i}" / f"img_{k:05d}.jpg").write_bytes(
                bytes(encode_jpeg(frame, quality=95).numpy())
            )
        entries_v.append(ListEntry(f"v{i}.mp4", NUM_FRAMES, i))
        entries_f.append(ListEntry(f"v{i}", NUM_FRAMES, i))
    write_list(videos / "list.txt", entries_v)
    write_list(frames / "list.txt", entries_f)
    write_classes(frames / "classes.txt", ["a", "b", "c"])
    return tmp_path


def make(tiny: Path, source: str = "frames", mode: str = "train", **options) -> VideoClipDataset:
    """The dataset of ``tiny``'s frames or videos, clips of 4 frames of 32 x 32: ``mode`` train
    (augmented), val (the single centre view) or test. Each of ``options`` goes to the
    settings object with a field of its name."""
    folder = tiny / ("frames" if source == "frames" else "videos")
    options = {"num_segments": 4, "input_size": 32, "scale_size": 32, "source": source, **options}

    def settings(cls, **fixed):
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**fixed, **{k: options.pop(k) for k in list(options) if k in names})

    clip, reading = settings(ClipSize), settings(Reading)
    if mode == "train":
        task = {"augment": settings(Augmentation)}
    else:
        task = {"views": settings(Protocol, name=mode)}
    assert not options, f"no setting of {mode} is named {sorted(options)}"
    return VideoClipDataset(folder / "list.txt", folder, clip=clip, reading=reading, **task)


def frame_indices(clip: torch.Tensor) -> list[int]:
    """Which frame each slot of a uint8 clip (T, 3, S, S) shows, from its grey level (8 * k)."""
    levels = clip.float().mean(dim=(1, 2, 3))
    return [round(level / 8) for level in levels.tolist()]


def test_shapes_per_mode_and_classes(tiny):
    train = make(tiny)
    sample = train[0]  # the crop, resized on the trainer's device
    crop_sizes = {(h, w) for w, h in multiscale_crop_sizes(32, 32, 32)}
    assert sample.clip.dtype == torch.uint8 and sample.clip.shape[:2] == (4, 3)
    assert tuple(sample.clip.shape[2:]) in crop_sizes and sample.resize_to == 32
    clips = collate_clips([train[i] for i in range(3)]).model_input("cpu")
    assert clips.shape == (3, 4, 3, 32, 32) and clips.dtype == torch.float32
    assert (sample.label, sample.index, sample.error) == (0, 0, None)
    assert train.classes == ["a", "b", "c"] and len(train) == 3
    assert make(tiny, mode="val").__getitem__(1).clip.shape == (1, 4, 3, 32, 32)
    test = make(tiny, mode="test", clips=2, twice_sample=True, crops=3, full_res=True)
    assert test.num_views == 12 and test[2].clip.shape == (12, 4, 3, 32, 32)
    ten = make(tiny, mode="test", crops=10, input_size=24)
    assert ten[0].clip.shape == (10, 4, 3, 24, 24)
    dense = make(tiny, mode="test", dense=True, clips=3)
    assert dense[0].clip.shape == (3, 4, 3, 32, 32)
    assert make(tiny, source="videos").classes is None  # no classes.txt beside that list


def test_val_and_test_sample_the_official_indices(tiny):
    val = make(tiny, mode="val")[0].clip  # (1, T, 3, S, S)
    assert frame_indices(val[0]) == [2, 6, 10, 14]  # centres of 4 segments of 4 frames
    test = make(tiny, mode="test", twice_sample=True, crops=3, full_res=True)[0].clip
    # temporal-major: 3 crops of the centres, then 3 crops of the segment starts
    assert [frame_indices(view) for view in test] == [[2, 6, 10, 14]] * 3 + [[0, 4, 8, 12]] * 3


def test_even_sampling_gives_evenly_spaced_train_frames(tiny):
    even = make(tiny, sampling="even", seed=3)
    for epoch in range(3):
        even.set_epoch(epoch)
        got = [frame_indices(even[i].clip) for i in range(3)]
        assert all(x[0] < 4 and x == [x[0] + 4 * k for k in range(4)] for x in got)
    assert frame_indices(make(tiny, mode="val")[0].clip[0]) == [2, 6, 10, 14]


def test_videos_and_frames_sample_the_same_frames(tiny):
    for mode, options in (("train", {"seed": 5}), ("test", {"clips": 2})):
        runs = [
            make(tiny, source=s, backend=b, mode=mode, **options)
            for s, b in (("frames", "decord"), ("videos", "decord"), ("videos", "pyav"))
        ]
        for i in range(3):
            clips = [run[i].clip for run in runs]
            views = [clip.unsqueeze(0) if mode == "train" else clip for clip in clips]
            got = [[frame_indices(v) for v in view] for view in views]
            assert got[0] == got[1] == got[2]
            if mode == "train":  # one frame inside each segment of 4
                assert all(4 * k <= x < 4 * k + 4 for k, x in enumerate(got[0][0]))


def test_deterministic_across_workers_and_epochs(tiny):
    dataset = make(tiny, seed=1)

    def epoch_clips(loader: DataLoader, epoch: int) -> torch.Tensor:
        dataset.set_epoch(epoch)
        return torch.cat([batch.model_input("cpu") for batch in loader])

    serial = DataLoader(dataset, batch_size=2, num_workers=0, collate_fn=collate_clips)
    workers = DataLoader(
        dataset, batch_size=2, num_workers=2, collate_fn=collate_clips, persistent_workers=True
    )
    e0, e1 = epoch_clips(serial, 0), epoch_clips(serial, 1)
    assert not torch.equal(e0, e1)  # a new epoch draws new frames and crops
    assert torch.equal(epoch_clips(workers, 0), e0)
    assert torch.equal(epoch_clips(workers, 1), e1)  # set_epoch reaches persistent workers
    dataset.set_epoch(1)
    assert torch.equal(collate_clips([dataset[2]]).model_input("cpu")[0], e1[2])  # resume: alone


def test_colour_jitter_changes_each_clips_colours_and_nothing_else(tiny):
    """With colour_jitter the clips are the same frames and crops, each clip then given the
    colour change drawn for it; without it no draw is made and no change is applied."""
    plain, jittered = make(tiny, seed=2), make(tiny, seed=2, colour_jitter=0.4)
    for dataset in (plain, jittered):
        dataset.set_epoch(3)
    before = collate_clips([plain[i] for i in range(3)])
    after = collate_clips([jittered[i] for i in range(3)])
    assert before.colours is None
    assert after.colours.shape == (3, 6) and len(set(map(tuple, after.colours.tolist()))) == 3
    assert torch.equal(after.clips, before.clips) and torch.equal(after.flips, before.flips)
    expected = jitter_colour(before.model_input("cpu"), after.colours)
    assert torch.equal(after.model_input("cpu"), expected)
    assert not torch.allclose(expected, before.model_input("cpu"))


def test_train_batch_pads_crops_and_finishes_each_as_its_own():
    """Crops of different sizes share one zero-padded batch; the model input of each is its own
    crop resized and mirrored, then normalised, as if it had been batched alone."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 4, 20, 30, 3), dtype=torch.uint8, generator=gen)
    frames = frames.permute(0, 1, 4, 2, 3)  # channels-last views, as the frame sources give
    crops = [frames[0, ..., 2:18, 5:25], frames[1, ..., :20, 4:24], frames[2, ..., 3:14, :11]]
    samples = [
        Sample(crop, label, i, flip=i == 1, resize_to=16)
        for i, (crop, label) in enumerate(zip(crops, [2, 0, 1], strict=True))
    ]
    batch = collate_clips(samples)
    assert batch.clips.shape == (3, 4, 3, 20, 20)  # the largest height and width
    assert batch.sizes.tolist() == [[16, 20], [20, 20], [11, 11]]
    assert batch.flips.tolist() == [False, True, False] and batch.labels.tolist() == [2, 0, 1]
    assert torch.equal(batch.clips[2, ..., :11, :11], crops[2])
    assert not batch.clips[2, ..., 11:, :].any() and not batch.clips[0, ..., 16:, :].any()
    clips = batch.model_input("cpu")
    assert clips.shape == (3, 4, 3, 16, 16) and clips.is_contiguous()
    for b, crop in enumerate(crops):
        assert torch.equal(clips[b], normalize(resize_crop(crop, 16, flip=b == 1)))
    assert torch.equal(clips[1], normalize(resize_crop(crops[1], 16).flip(-1)))


def test_missing_frame_is_an_error_naming_it_or_skipped_and_counted(tiny):
    (tiny / "frames" / "v1" / "img_00007.jpg").unlink()
    with open(tiny / "frames" / "list.txt", "a") as handle:
        handle.write("gone 16 2\n")
    strict = make(tiny, mode="val")
    with pytest.raises(DataError, match=r"v1/img_00007.jpg: frame is missing"):
        strict[1]
    with pytest.raises(DataError, match="gone"):
        strict[3]

    lenient = make(tiny, mode="val", skip_bad=True)
    batch = collate_clips([lenient[i] for i in range(4)])
    assert isinstance(batch, ClipBatch)
    assert batch.clips.shape == (2, 1, 4, 3, 32, 32)
    assert batch.labels.tolist() == [0, 2] and batch.indices.tolist() == [0, 2]
    assert len(batch.skipped) == 2
    assert "img_00007.jpg" in batch.skipped[0] and "gone" in batch.skipped[1]
    empty = collate_clips([lenient[1]])
    assert empty.clips.numel() == 0 and empty.labels.tolist() == [] and len(empty.skipped) == 1


def test_corrupt_video_is_an_error_naming_it(tiny):
    (tiny / "videos" / "v2.mp4").write_bytes(b"\x00not a video" * 10)
    for backend in ("decord", "pyav"):
        with pytest.raises(DataError, match=r"v2.mp4: cannot open video"):
            make(tiny, source="videos", backend=backend)[2]


def test_find_missing_uses_first_and_last_frame(tiny):
    frames = tiny / "frames"
    (frames / f"v2/img_{NUM_FRAMES:05d}.jpg").unlink()
    entries = [*read_list(frames / "list.txt"), ListEntry("nowhere", 4, 0)]
    assert find_missing(entries, frames, "frames") == ["v2", "nowhere"]
    videos = tiny / "videos"
    (videos / "v0.mp4").write_bytes(b"")
    assert find_missing(read_list(videos / "list.txt"), videos, "videos") == ["v0.mp4"]


def test_a_frame_template_without_a_field_is_refused_before_any_frame_is_read(tiny):
    message = (
        "frame template 'img_00001.jpg' is not a frame file name with one integer field "
        "(no {} field for the frame number); use e.g. 'img_{:05d}.jpg'"
    )
    frames = tiny / "frames"
    with pytest.raises(DataError) as caught:
        find_missing(read_list(frames / "list.txt"), frames, "frames", "img_00001.jpg")
    assert str(caught.value) == message
    with pytest.raises(DataError) as caught:
        make(tiny, frame_template="img_00001.jpg")
    assert str(caught.value) == message
    videos = make(tiny, source="videos", frame_template="img_00001.jpg")
    assert videos.reading.frame_template == "img_00001.jpg"


def test_bad_options_and_labels_are_refused(tiny):
    with pytest.raises(UsageError, match="flip 'swap' needs"):
        make(tiny, flip="swap")
    with pytest.raises(UsageError, match=r"colour_jitter must be in \[0, 1\) \(0: off\), got 1.5"):
        make(tiny, colour_jitter=1.5)
    write_classes(tiny / "frames" / "classes.txt", ["a", "b"])
    with pytest.raises(DataError) as caught:
        make(tiny)
    frames = tiny / "frames"
    assert str(caught.value) == (
        f"{frames / 'list.txt'}:3: label 2 is outside 0..1 ({frames / 'classes.txt'} has 2 "
        "classes); rebuild both with tsm build-list"
    )


def test_flip_swap_changes_the_label_of_mirrored_clips(tiny):
    dataset = make(tiny, flip="swap", flip_pairs=[(0, 1)])
    labels = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        labels.add(dataset[0].label)
    assert labels == {0, 1}
    assert make(tiny, flip="off")[0].label == 0


def test_a_list_count_past_the_video_end_is_an_error_with_pyav(tiny):
    # PyAV takes the list's count (counting would decode the whole video); decord reads the
    # container's and samples from the smaller.
    videos = tiny / "videos"
    write_list(videos / "list.txt", [ListEntry("v0.mp4", 20, 0)])  # the video has 16
    val = {b: make(tiny, source="videos", backend=b, mode="val") for b in ("decord", "pyav")}
    assert frame_indices(val["decord"][0].clip[0]) == [2, 6, 10, 14]  # centres of 16 frames
    with pytest.raises(
        DataError, match=r"v0.mp4: frame 17 could not be decoded; the video ends after 16 frames"
    ):
        val["pyav"][0]  # centres of 20 frames: 2, 7, 12, 17
    lenient = make(tiny, source="videos", backend="pyav", mode="val", skip_bad=True)
    assert lenient[0].clip is None and "not the 20 given" in lenient[0].error


def test_the_frame_cache_gives_the_same_clips_and_reads_each_frame_once(tiny, monkeypatch):
    import torchvision.io

    reads: list[str] = []
    real = torchvision.io.read_file
    monkeypatch.setattr(torchvision.io, "read_file", lambda path: reads.append(path) or real(path))
    plain, cached = make(tiny, seed=3), make(tiny, seed=3, frame_cache_mb=1)
    assert plain.frame_cache is None
    plain_reads, cached_reads = [], []
    for epoch in range(3):  # train mode: each epoch draws other frames and crops
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        reads.clear()
        expected = [plain[i].clip for i in range(len(plain))]
        plain_reads += reads
        reads.clear()
        got = [cached[i].clip for i in range(len(cached))]
        cached_reads += reads
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert len(plain_reads) > len(set(plain_reads))  # without the cache, frames are read again
    assert sorted(cached_reads) == sorted(set(plain_reads))  # with it, each once
    assert len(cached.frame_cache) == len(cached_reads)
    assert cached.frame_cache.used == len(cached_reads) * 3 * 32 * 32


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("mode", ["train", "val"])
def test_the_frame_cache_decodes_each_video_frame_once(tiny, monkeypatch, backend, mode):
    """From videos: the same clips as without the cache, each frame decoded once over three
    epochs, and a video is opened again only while some frame it is asked for is not kept."""
    from tsmcli.data import dataset as dataset_module

    opened: list[Path] = []
    decoded: list[tuple[Path, int]] = []

    def counting_open(path, backend, num_frames=None):
        video = open_video(path, backend, num_frames=num_frames)
        get = video.get

        def counted_get(indices):
            decoded.extend((Path(path), i) for i in indices)
            return get(indices)

        opened.append(Path(path))
        video.get = counted_get
        return video

    options = {"source": "videos", "backend": backend, "mode": mode}
    if mode == "train":
        options["seed"] = 3
    plain, cached = make(tiny, **options), make(tiny, frame_cache_mb=1, **options)
    for epoch in range(3):  # train mode: each epoch draws other frames and crops
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        expected = [plain[i].clip for i in range(len(plain))]
        monkeypatch.setattr(dataset_module, "open_video", counting_open)
        got = [cached[i].clip for i in range(len(cached))]
        monkeypatch.undo()
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert len(decoded) == len(set(decoded)) == len(cached.frame_cache)  # each frame once
    assert cached.frame_cache.used == len(decoded) * 3 * 32 * 32
    if mode == "val":  # the same frames every epoch: opened in the first only
        assert len(opened) == len(set(opened)) == len(cached)


def test_the_frame_cache_keeps_no_more_than_its_budget():
    from tsmcli.data.frame_cache import FrameCache, frame_cache_for

    cache = FrameCache(budget=2 * 3 * 32 * 32)
    frames = [torch.full((3, 32, 32), k, dtype=torch.uint8) for k in range(3)]
    for k, frame in enumerate(frames):
        cache.put(k, frame)
    assert len(cache) == 2 and cache.used == cache.budget and cache.get(2) is None
    assert cache.get(1) is frames[1]
    assert frame_cache_for(0) is None and frame_cache_for(1).budget == 2**20
    with pytest.raises(UsageError, match="frame_cache_mb"):
        Reading(frame_cache_mb=-1)


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_builds_the_dataset_as_it_shows(tiny, monkeypatch):
    """The README's own loop over our data: its imports and its dataset, run as written (in a
    folder with its lists/ and frames/), give training clips its loop can finish."""
    import ast
    import re

    text = README.read_text(encoding="utf-8")
    block = re.search(r"Your own loop over our data:\n\n```python\n(.*?)```", text, re.S)
    tree = ast.parse(block[1])
    kept = [
        node
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        or (isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "data")
    ]
    (tiny / "lists").mkdir()
    write_list(tiny / "lists" / "train.txt", read_list(tiny / "frames" / "list.txt"))
    monkeypatch.chdir(tiny)
    names: dict = {}
    exec(compile(ast.Module(kept, []), "README.md", "exec"), names)
    data = names["data"]
    assert isinstance(data, VideoClipDataset) and len(data) == 3 and data.mode == "train"
    assert data.clip_size == ClipSize(8) and data.reading == Reading()
    data.set_epoch(1)
    clips = names["collate_clips"]([data[i] for i in range(3)]).model_input("cpu")
    assert clips.shape == (3, 8, 3, 224, 224) and clips.dtype == torch.float32


def test_a_list_the_command_has_read_is_not_read_again(tiny, monkeypatch):
    """Given the ``ListFile`` a command read and checked, the dataset takes its entries and
    classes as they are: neither the list nor its classes.txt is opened again."""
    folder = tiny / "frames"
    listed = read_list_file(folder / "list.txt")
    opened: list[Path] = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda p, *a, **k: opened.append(p) or real(p, *a, **k))
    views = Protocol("single")
    dataset = VideoClipDataset(listed, folder, clip=ClipSize(4, 32, 32), views=views)
    assert opened == [] and dataset.entries is listed.entries and dataset.classes == ["a", "b", "c"]
    assert frame_indices(dataset[0].clip[0]) == [2, 6, 10, 14]


def test_each_setting_is_checked_where_it_is_made(tiny):
    clip = ClipSize(4, 32, 32)
    for make_bad, message in [
        (lambda: Reading(source="clips"), "source must be one of frames, videos, got 'clips'"),
        (lambda: Reading(backend="cv2"), "backend must be one of decord, pyav, got 'cv2'"),
        (lambda: ClipSize(0), "num_segments must be >= 1, got 0"),
        (lambda: ClipSize(4, 0, 32), "input_size 0 and scale_size 32 must be positive"),
        (lambda: Augmentation(sampling="random"), "sampling must be one of segments, even, dense"),
        (lambda: Augmentation(flip="yes"), "flip must be one of off, on, swap, got 'yes'"),
        (lambda: Augmentation(seed=-1), "seed must be >= 0, got -1"),
        (lambda: Protocol("p", clips=0), "clips must be at least 1, got 0"),
        (lambda: Protocol("p", crops=5), "crops must be one of 1, 3, 10, got 5"),
        (lambda: Protocol("p", average="max"), "average must be one of score, prob, got 'max'"),
    ]:
        with pytest.raises(UsageError) as caught:
            make_bad()
        assert str(caught.value).startswith(message)
    assert Augmentation(flip="swap", flip_pairs=[[0, 1]]).flip_pairs == ((0, 1),)
    listed = tiny / "frames" / "list.txt"
    for task in ({}, {"augment": Augmentation(), "views": Protocol("single")}):
        with pytest.raises(UsageError, match="augment .* or views"):
            VideoClipDataset(listed, tiny, clip=clip, **task)
    with pytest.raises(UsageError, match="full-res views need scale_size >= input_size"):
        full_res = Protocol("p", crops=3, full_res=True)
        VideoClipDataset(listed, tiny, clip=ClipSize(4, 32, 24), views=full_res)
