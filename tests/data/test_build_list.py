"""build_list's own steps on tiny datasets: the folder dataset's stratified split, repeated
and conflicting clips in every family's format, what is refused before any work, the CLI's
summary, and Ctrl-C."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from annotated_clips import frames, labels, lines
from click.testing import CliRunner

import tsmcli.data.build_list as build_list_module
from tsmcli.cli import cli
from tsmcli.data.build_list import build_list
from tsmcli.data.lists import read_classes
from tsmcli.errors import DataError, UsageError

# ---------------------------------------------------------------------------- folder


def _folder_dataset(root: Path, sizes: dict[str, int]) -> None:
    for name, count in sizes.items():
        for k in range(count):
            frames(root / name / f"clip{k:02d}", 2)


def test_folder_split_is_stratified_seeded_and_stable(tmp_path):
    root = tmp_path / "data"
    _folder_dataset(root, {"walk": 8, "jump": 4, "sit": 1})
    (root / "walk" / "clip99").mkdir()  # empty: reported, not split
    result = build_list("folder", root, tmp_path / "a", seed=3)
    assert read_classes(result.classes_file) == ["jump", "sit", "walk"]
    train, val = lines(result.lists["train"]), lines(result.lists["val"])
    per_class = {
        c: (sum(x.endswith(f" {i}") for x in train), sum(x.endswith(f" {i}") for x in val))
        for i, c in enumerate(["jump", "sit", "walk"])
    }
    assert per_class == {
        "jump": (3, 1),
        "sit": (1, 0),
        "walk": (6, 2),
    }  # round(n / 4), n >= 2: >= 1
    assert lines(result.missing_file) == [
        "unsplit\twalk/clip99\tempty frame folder (no img_00001.jpg)"
    ]
    assert sorted(train + val) == sorted(
        [f"jump/clip{k:02d} 2 0" for k in range(4)]
        + ["sit/clip00 2 1"]
        + [f"walk/clip{k:02d} 2 2" for k in range(8)]
    )

    again = build_list("folder", root, tmp_path / "b", seed=3)
    assert lines(again.lists["val"]) == val
    others = [
        lines(build_list("folder", root, tmp_path / f"s{s}", seed=s).lists["val"]) for s in range(4)
    ]
    assert len({tuple(v) for v in others}) > 1

    _folder_dataset(root, {"aaa_new": 3})  # a new class shifts labels, not the other splits
    grown = build_list("folder", root, tmp_path / "c", seed=3)
    walk_val = {x.split()[0] for x in lines(grown.lists["val"]) if x.startswith("walk/")}
    assert walk_val == {x.split()[0] for x in val if x.startswith("walk/")}


def test_folder_of_videos_counts_decoded_frames(tmp_path, make_video):
    root = tmp_path / "videos"
    make_video(root / "a" / "x.mp4", num_frames=5, size=16)
    make_video(root / "b" / "y.mp4", num_frames=3, size=16)
    (root / "b" / "notes.txt").write_text("not a video")
    result = build_list("folder", root, tmp_path / "out", val_fraction=0.0)
    assert result.source == "videos"
    assert lines(result.lists["train"]) == ["a/x.mp4 5 0", "b/y.mp4 3 1"]
    assert lines(result.lists["val"]) == []


# ---------------------------------------------------------------------------- errors, CLI


def test_errors_name_what_to_fix(tmp_path):
    with pytest.raises(
        UsageError, match="unknown dataset 'kinetic400'; did you mean 'kinetics400'"
    ):
        build_list("kinetic400", tmp_path, tmp_path / "out")
    with pytest.raises(DataError, match=r"no ucf101 annotation file here .*trainlist01.txt"):
        build_list("ucf101", tmp_path, tmp_path / "out")
    (tmp_path / "jester-v1-train.csv").write_text("1;Swiping Left\n")
    with pytest.raises(DataError, match=r"none of the 1 annotated clips was found"):
        build_list("jester", tmp_path, tmp_path / "out")


def test_cli_build_list_prints_a_summary(tmp_path):
    root = tmp_path / "data"
    _folder_dataset(root, {"a": 2, "b": 2})
    out = tmp_path / "lists"
    result = CliRunner().invoke(
        cli, ["build-list", "--dataset", "folder", "--root", str(root), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "train.txt: 2" in result.output and "val.txt: 2" in result.output
    assert lines(out / "train.txt")[0].endswith(" 2 0")
    assert "test protocol: tsm eval --protocol single" in result.output.splitlines()


def test_paths_with_spaces_are_refused_before_any_work(tmp_path):
    # mmaction2's download.py names class folders with spaces until rename_classnames.sh runs
    _folder_dataset(tmp_path / "data", {"air drumming": 2})
    with pytest.raises(DataError, match=r"air drumming/clip0\d: list paths cannot contain spaces"):
        build_list("folder", tmp_path / "data", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- repeated clips

# Annotation rows (split, clip, class index). A is listed twice in train, B in train and val,
# D only in val; C (added for the conflict cases) is class 1 in train and class 0 in val.
_ROWS = [("train", "A", 0), ("train", "A", 0), ("train", "B", 0), ("val", "B", 0), ("val", "D", 0)]
_CONFLICT = [("train", "C", 1), ("val", "C", 0)]
# Each writer writes rows in one dataset family's annotation format, and a frame folder for
# each clip, and returns (name in missing.txt / duplicates.txt, origin) for each row.


def _write_kinetics(ann: Path, root: Path, rows) -> list[tuple[str, str]]:
    k400 = labels("kinetics_k400.txt")
    files = {"train": ann / "kinetics_train.csv", "val": ann / "kinetics_val.csv"}
    text = {split: ["label,youtube_id,time_start,time_end,split"] for split in files}
    out = []
    for split, clip, label in rows:
        start = "ABCD".index(clip)
        text[split].append(f'"{k400[label]}",{clip * 11},{start},{start + 10},{split}')
        name = f"{clip * 11}_{start:06d}_{start + 10:06d}"
        out.append((name, f"{files[split]}:{len(text[split])}"))
        frames(root / name, 2)
    for split, path in files.items():
        path.write_text("\n".join(text[split]) + "\n")
    return out


def _write_jester(ann: Path, root: Path, rows) -> list[tuple[str, str]]:
    jester = labels("jester.txt")
    files = {"train": ann / "jester-v1-train.csv", "val": ann / "jester-v1-validation.csv"}
    text: dict[str, list[str]] = {split: [] for split in files}
    out = []
    for split, clip, label in rows:
        vid = str(100 + "ABCD".index(clip))
        text[split].append(f"{vid};{jester[label]}")
        out.append((vid, f"{files[split]}:{len(text[split])}"))
        frames(root / vid, 2, "{:05d}.jpg")
    for split, path in files.items():
        path.write_text("\n".join(text[split]) + "\n")
    return out


def _write_sthv2(ann: Path, root: Path, rows) -> list[tuple[str, str]]:
    ssv2 = labels("sthv2.txt")
    files = {
        "train": ann / "something-something-v2-train.json",
        "val": ann / "something-something-v2-validation.json",
    }
    entries: dict[str, list[dict]] = {split: [] for split in files}
    out = []
    for split, clip, label in rows:
        vid = str(200 + "ABCD".index(clip))
        out.append((vid, f"{files[split]}: entry {len(entries[split])} (id {vid})"))
        entries[split].append({"id": vid, "template": ssv2[label]})
        frames(root / vid, 2)
    for split, path in files.items():
        path.write_text(json.dumps(entries[split]))
    return out


def _write_ucf101(ann: Path, root: Path, rows) -> list[tuple[str, str]]:
    """The class is the folder named in the split file; every clip's frames are in class 0."""
    ucf = labels("ucf101.txt")
    files = {"train": ann / "trainlist01.txt", "val": ann / "testlist01.txt"}
    text: dict[str, list[str]] = {split: [] for split in files}
    out = []
    for split, clip, label in rows:
        number = f" {label + 1}" if split == "train" else ""  # testlist has no label column
        text[split].append(f"{ucf[label]}/v_{clip}.avi{number}")
        out.append((f"{ucf[label]}/v_{clip}", f"{files[split]}:{len(text[split])}"))
        frames(root / ucf[0] / f"v_{clip}", 2)
    for split, path in files.items():
        path.write_text("\n".join(text[split]) + "\n")
    return out


def _write_hmdb51(ann: Path, root: Path, rows) -> list[tuple[str, str]]:
    """One file per class, '<video>.avi 1' (train) or '2' (test) a line."""
    hmdb = labels("hmdb51.txt")
    text: dict[str, list[str]] = {name: [] for name in hmdb}
    out = []
    for split, clip, label in rows:
        text[hmdb[label]].append(f"{clip}_video.avi {1 if split == 'train' else 2}")
        path = ann / f"{hmdb[label]}_test_split1.txt"
        out.append((f"{hmdb[label]}/{clip}_video", f"{path}:{len(text[hmdb[label]])}"))
        frames(root / hmdb[0] / f"{clip}_video", 2)
    for name, body in text.items():
        (ann / f"{name}_test_split1.txt").write_text("".join(f"{line}\n" for line in body))
    return out


_FAMILIES = {
    "kinetics400": (_write_kinetics, "kinetics_k400.txt"),
    "jester": (_write_jester, "jester.txt"),
    "sthv2": (_write_sthv2, "sthv2.txt"),
    "ucf101": (_write_ucf101, "ucf101.txt"),
    "hmdb51": (_write_hmdb51, "hmdb51.txt"),
}


def _repeats_case(tmp_path: Path, dataset: str, rows):
    ann, root = tmp_path / "ann", tmp_path / "root"
    ann.mkdir()
    write, label_file = _FAMILIES[dataset]
    return ann, root, write(ann, root, rows), labels(label_file)


@pytest.mark.parametrize("dataset", sorted(_FAMILIES))
def test_a_clip_twice_in_a_split_or_in_two_splits_is_written_once_and_reported(tmp_path, dataset):
    ann, root, rows, _ = _repeats_case(tmp_path, dataset, _ROWS)

    result = build_list(dataset, root, tmp_path / "out", annotations=ann)

    a, b, d = rows[0][0], rows[2][0], rows[4][0]
    assert lines(result.lists["train"]) == [f"{a} 2 0", f"{b} 2 0"]
    assert lines(result.lists["val"]) == [f"{d} 2 0"]  # B left val: it is trained on
    assert (result.num_duplicates, result.num_overlaps, result.num_conflicts) == (1, 1, 0)
    assert result.duplicates_file == tmp_path / "out" / "duplicates.txt"
    assert lines(result.duplicates_file) == [
        f"train\t{a}\tlisted again ({rows[1][1]}) after {rows[0][1]}",
        f"val\t{b}\talso in train ({rows[2][1]}); left out of val",
    ]


@pytest.mark.parametrize("dataset", sorted(_FAMILIES))
def test_a_clip_with_two_labels_is_refused_unless_told_which_to_keep(tmp_path, dataset):
    ann, root, rows, classes = _repeats_case(tmp_path, dataset, _ROWS + _CONFLICT)
    (c_train, c_train_at), (c_val, c_val_at) = rows[5], rows[6]

    with pytest.raises(DataError) as refused:
        build_list(dataset, root, tmp_path / "out", annotations=ann)
    assert str(refused.value) == (
        f"clip {c_train}: labelled {classes[1]!r} ({c_train_at}) and {classes[0]!r} "
        f"({c_val_at}); "
        "fix the annotations, or pass --conflicting-labels first (keep the first label) or "
        "drop (leave the clip out)"
    )
    assert not (tmp_path / "out").exists()

    a, b, d = rows[0][0], rows[2][0], rows[4][0]
    first = build_list(
        dataset, root, tmp_path / "first", annotations=ann, conflicting_labels="first"
    )
    train = lines(first.lists["train"])
    assert train[:2] == [f"{a} 2 0", f"{b} 2 0"] and train[2].split()[1:] == ["2", "1"]
    assert len(train) == 3 and lines(first.lists["val"]) == [f"{d} 2 0"]
    assert (first.num_duplicates, first.num_overlaps, first.num_conflicts) == (1, 1, 1)
    assert lines(first.duplicates_file)[2] == (
        f"val\t{c_val}\tlabelled {classes[0]!r} ({c_val_at}), first {classes[1]!r} "
        f"({c_train_at}); kept the first"
    )

    drop = build_list(dataset, root, tmp_path / "drop", annotations=ann, conflicting_labels="drop")
    assert lines(drop.lists["train"]) == [f"{a} 2 0", f"{b} 2 0"]
    assert lines(drop.lists["val"]) == [f"{d} 2 0"]
    both = f"labelled {classes[1]!r} ({c_train_at}), {classes[0]!r} ({c_val_at}); left out"
    assert lines(drop.duplicates_file) == [
        f"train\t{a}\tlisted again ({rows[1][1]}) after {rows[0][1]}",
        f"train\t{c_train}\t{both}",
        f"val\t{b}\talso in train ({rows[2][1]}); left out of val",
        f"val\t{c_val}\t{both}",
    ]
    assert (drop.num_duplicates, drop.num_overlaps, drop.num_conflicts) == (1, 1, 1)


def test_cli_reports_repeats_and_refuses_two_labels_in_one_line(tmp_path):
    ann, root, rows, classes = _repeats_case(tmp_path, "jester", _ROWS + _CONFLICT)
    command = [
        "build-list",
        "--dataset",
        "jester",
        "--root",
        str(root),
        "--annotations",
        str(ann),
        "--out",
        str(tmp_path / "out"),
    ]

    refused = CliRunner().invoke(cli, command)
    assert refused.exit_code == 1
    assert refused.output.splitlines() == [
        f"error: clip 102: labelled {classes[1]!r} ({rows[5][1]}) and {classes[0]!r} "
        f"({rows[6][1]}); fix the annotations, or pass --conflicting-labels first (keep the "
        "first label) or drop (leave the clip out)"
    ]

    kept = CliRunner().invoke(cli, [*command, "--conflicting-labels", "first"])
    assert kept.exit_code == 0, kept.output
    assert kept.output.splitlines()[-1] == (
        "repeated clips: 1 listed twice in a split, 1 also in an earlier split (left out of "
        f"the later one), 1 with two labels (kept the first label): see "
        f"{tmp_path / 'out' / 'duplicates.txt'}"
    )
    assert (
        "--conflicting-labels [error|first|drop]"
        in CliRunner().invoke(cli, ["build-list", "--help"]).output
    )


@pytest.mark.parametrize(
    ("dataset", "line"),
    [
        (
            "kinetics400",
            "test protocol: tsm eval --protocol kinetics (the views of kinetics400's published "
            "numbers: tsm-k400-r50-8f-dense 74.1 top-1, and 2 more in tsm zoo list)",
        ),
        ("jester", "test protocol: tsm eval --protocol single"),  # nothing published
        ("ucf101", "test protocol: tsm eval --protocol single"),
    ],
)
def test_published_numbers_are_named_only_where_the_model_zoo_has_some(tmp_path, dataset, line):
    ann, root, _, _ = _repeats_case(tmp_path, dataset, _ROWS)
    out = tmp_path / "out"
    command = ["build-list", "--dataset", dataset, "--root", str(root), "--out", str(out)]
    result = CliRunner().invoke(cli, [*command, "--annotations", str(ann)])
    assert result.exit_code == 0, result.output
    assert line in result.output.splitlines()
    published = build_list(dataset, root, tmp_path / "api", annotations=ann).published
    expected = {
        "kinetics400": (
            ("tsm-k400-r50-8f-dense", 74.1),
            ("tsm-k400-mbv2-8f-dense", 69.5),
            ("tsn-k400-r50", 70.6),
        )
    }
    assert published == expected.get(dataset, ())


def test_dataset_manifests_cite_only_files_that_exist():
    repository = Path(__file__).resolve().parents[2]
    for manifest in sorted((repository / "datasets").glob("*.yaml")):
        comments = [line for line in manifest.read_text().splitlines() if line.startswith("#")]
        for cited in re.findall(r"[\w./-]+\.(?:md|py|yaml|txt)\b", "\n".join(comments)):
            if "/" in cited or cited.endswith(".md"):
                assert (repository / cited).exists(), f"{manifest.name} cites {cited}"


# ---------------------------------------------------------------------------- refused before any work


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("00001.jpg", "no {} field for the frame number"),
        ("{}{}.jpg", "2 fields"),
        ("img_{:s}.jpg", "the field {:s} is not a plain integer field such as {:05d}"),
        ("img_{name}.jpg", "the field {name} is not a plain integer field such as {:05d}"),
        ("img_{!r}.jpg", "the field {!r} is not a plain integer field such as {:05d}"),
        ("img_{:.2f}.jpg", "the field {:.2f} is not a plain integer field such as {:05d}"),
        ("{:05d}/x.jpg", "a path separator; frames sit directly in their folder"),
        ("img_{:05d.jpg", "not a format string: unmatched '{' in format spec"),
    ],
)
def test_a_bad_template_is_a_usage_error_before_any_work(tmp_path, template, problem):
    # 00001.jpg used to loop forever counting frames: every frame had the same name.
    frames(tmp_path / "data" / "a" / "clip", 2, "{:05d}.jpg")
    with pytest.raises(UsageError) as caught:
        build_list("folder", tmp_path / "data", tmp_path / "out", template=template)
    assert str(caught.value) == (
        f"--template {template!r} is not a frame file name with one integer field ({problem}); "
        "use e.g. 'img_{:05d}.jpg'"
    )
    assert not (tmp_path / "out").exists()

    result = CliRunner().invoke(
        cli,
        [
            "build-list",
            "--dataset",
            "folder",
            "--root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
            "--template",
            template,
        ],
    )
    assert result.exit_code == 2
    assert result.output.splitlines() == [f"error: {caught.value}"]


@pytest.mark.parametrize("under_a_file", [False, True])
def test_an_out_path_that_is_or_is_under_a_file_is_refused_before_any_work(
    tmp_path, monkeypatch, under_a_file
):
    _folder_dataset(tmp_path / "data", {"a": 2, "b": 2})
    (tmp_path / "lists").write_text("mine")
    out = tmp_path / "lists" / "k400" if under_a_file else tmp_path / "lists"
    measured = []
    monkeypatch.setattr(
        build_list_module, "_measure", lambda *args: measured.append(args) or (2, "")
    )
    result = CliRunner().invoke(
        cli,
        ["build-list", "--dataset", "folder", "--root", str(tmp_path / "data"), "--out", str(out)],
    )
    assert result.exit_code == 2
    expected = (
        f"--out {out}: {tmp_path / 'lists'} is a file, not a folder; choose another path"
        if under_a_file
        else f"--out {out}: is a file, not a folder; choose a folder"
    )
    assert result.output.splitlines() == [f"error: {expected}"]
    assert measured == [] and (tmp_path / "lists").read_text() == "mine"


def test_ctrl_c_in_the_middle_stops_at_once_and_cancels_the_clips_not_started(
    tmp_path, monkeypatch, deadline
):
    """KeyboardInterrupt from the first clip ends build_list while the clips the other
    threads run are blocked (until the test lets them go); the queued clips never start."""
    _folder_dataset(tmp_path / "data", {"a": 20, "b": 20})
    started, release = [], threading.Event()

    def measure(path, source, template):
        if path.name == "clip00" and path.parent.name == "a":
            raise KeyboardInterrupt
        started.append(path)
        release.wait()
        return 2, ""

    monkeypatch.setattr(build_list_module, "_measure", measure)
    try:
        with deadline(30), pytest.raises(KeyboardInterrupt):
            build_list("folder", tmp_path / "data", tmp_path / "out", workers=3)
        assert len(started) <= 3  # at most one clip per thread was running
    finally:
        release.set()
    assert not (tmp_path / "out").exists()
