"""build_list on tiny copies of each dataset's annotation files (the formats of DATASETS.md)
and tiny frame folders: exact list contents, official label indices, missing clips, splits."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torchvision.io import encode_jpeg

from tsmcli.cli import cli
from tsmcli.data import adapters
from tsmcli.data.adapters import build_list, load_manifest
from tsmcli.data.decode import check_frame_template
from tsmcli.data.lists import read_classes
from tsmcli.errors import DataError, UsageError
from tsmcli.resources import labels_dir

_JPEG = bytes(encode_jpeg(torch.full((3, 8, 8), 128, dtype=torch.uint8)).numpy())


def frames(folder: Path, count: int, template: str = "img_{:05d}.jpg") -> Path:
    """A frame folder of ``count`` tiny JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, count + 1):
        (folder / template.format(k)).write_bytes(_JPEG)
    return folder


def labels(name: str) -> list[str]:
    return read_classes(labels_dir() / name)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ---------------------------------------------------------------------------- Kinetics


def test_kinetics_csv_both_layouts_quoted_labels_and_missing(tmp_path):
    k400 = labels("kinetics_k400.txt")
    ann, root = tmp_path / "ann", tmp_path / "k400"
    ann.mkdir()
    (ann / "kinetics_train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "abseiling,0wR5jVB-WPk,417,427,train,0\n"
        '"air drumming",-Xy3_abcDEF,14,24,train,0\n'
        '"hurling (sport)",ab_cdefghij,1,11,train,0\n'
        "abseiling,zzzzzzzzzzz,0,10,train,0\n"
    )
    (ann / "kinetics_val.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        '"massaging person\'s head",Q_Q_Q_Q_Q_Q,3.0,13.0,val,0\n'
    )
    (ann / "kinetics_test.csv").write_text(
        "youtube_id,time_start,time_end,split\n--65_UAU7ao,0,10,test\n"
    )
    # mmaction2 layout for train, TSM layout (normalised names, <id>_<start>) for val
    frames(root / "rawframes_train" / "abseiling" / "0wR5jVB-WPk_000417_000427", 5)
    frames(root / "rawframes_train" / "air_drumming" / "-Xy3_abcDEF_000014_000024", 3)
    frames(root / "rawframes_train" / "hurling_sport" / "ab_cdefghij_1", 4)
    frames(root / "val" / "massaging_persons_head" / "Q_Q_Q_Q_Q_Q_3", 2)

    result = build_list("kinetics400", root, tmp_path / "out", annotations=ann)

    out = tmp_path / "out"
    assert lines(out / "train.txt") == [
        "rawframes_train/abseiling/0wR5jVB-WPk_000417_000427 5 0",
        "rawframes_train/air_drumming/-Xy3_abcDEF_000014_000024 3 1",
        f"rawframes_train/hurling_sport/ab_cdefghij_1 4 {k400.index('hurling (sport)')}",
    ]
    massaging = k400.index("massaging person's head")
    assert lines(out / "val.txt") == [f"val/massaging_persons_head/Q_Q_Q_Q_Q_Q_3 2 {massaging}"]
    assert read_classes(out / "classes.txt") == k400
    assert lines(out / "missing.txt") == ["train\tzzzzzzzzzzz_000000_000010\tnot found"]
    assert not (out / "test.txt").exists()  # the old 4-column test CSV has no labels
    assert result.counts == {"train": 3, "val": 1}
    assert result.num_missing == 1 and result.unlabeled == {"test": 1}
    assert result.source == "frames" and result.template == "img_{:05d}.jpg"


def test_kinetics_videos_and_unknown_class_line(tmp_path, make_video):
    ann, root = tmp_path / "ann", tmp_path / "videos"
    ann.mkdir()
    (ann / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,0wR5jVB-WPk,417,427,val\n"
    )
    make_video(
        root / "videos_val" / "abseiling" / "0wR5jVB-WPk_000417_000427.mp4", num_frames=6, size=16
    )
    (root / "videos_val" / "abseiling" / "ab_cdefghij_000001_000011.mp4").write_bytes(b"")
    result = build_list("kinetics400", root, tmp_path / "out", annotations=ann)
    assert result.source == "videos" and result.template is None
    assert lines(result.lists["val"]) == ["videos_val/abseiling/0wR5jVB-WPk_000417_000427.mp4 6 0"]

    (ann / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,0wR5jVB-WPk,417,427,val\n"
        "abseilling,ab_cdefghij,1,11,val\n"
    )
    with pytest.raises(
        DataError,
        match=r"validate.csv:3: class 'abseilling' is not one of the "
        r"400 kinetics400 classes \(closest: 'abseiling'\)",
    ):
        build_list("kinetics400", root, tmp_path / "out", annotations=ann)


# ---------------------------------------------------------------------------- SSv1 / Jester


def test_sthv1_semicolon_csv_split_once_template_detected_and_label_orders(tmp_path):
    official = labels("sthv1.txt")
    comma = "Putting something that can't roll onto a slanted surface, so it slides down"
    assert comma in official
    root = tmp_path / "20bn-something-something-v1"
    (tmp_path / "something-something-v1-labels.csv").write_text("\n".join(official) + "\n")
    (tmp_path / "something-something-v1-train.csv").write_text(
        f"100218;{comma}\n24413;Holding something\n"
    )
    (tmp_path / "something-something-v1-validation.csv").write_text(
        "5;Turning the camera left while filming something\n6;Holding something\n"
    )
    (tmp_path / "something-something-v1-test.csv").write_text("54321\n")
    for vid, count in (("100218", 4), ("24413", 3), ("5", 2)):
        frames(root / vid, count, "{:05d}.jpg")
    (root / "6").mkdir()  # an empty frame folder (extraction failed)

    result = build_list("sthv1", root, tmp_path / "out", annotations=tmp_path)
    assert result.template == "{:05d}.jpg"
    assert lines(result.lists["train"]) == [f"100218 4 {official.index(comma)}", "24413 3 0"]
    assert lines(result.lists["val"]) == ["5 2 2"]  # "Turning the camera left..." is line 3
    assert lines(result.missing_file) == ["val\t6\tempty frame folder (no 00001.jpg)"]
    assert result.unlabeled == {"test": 1} and "test" not in result.lists

    result = build_list(
        "sthv1", root, tmp_path / "sorted", annotations=tmp_path, label_order="sorted"
    )
    ssv2 = labels("sthv2.txt")
    assert read_classes(result.classes_file) == ssv2
    assert lines(result.lists["train"])[1] == f"24413 3 {ssv2.index('Holding something')}"
    pairs = load_manifest("sthv1").flip_pairs_for(ssv2)
    assert sorted(tuple(sorted(p)) for p in pairs) == [(86, 87), (93, 94), (166, 167)]


def test_sthv1_label_file_in_another_order_is_refused(tmp_path):
    official = labels("sthv1.txt")
    (tmp_path / "something-something-v1-labels.csv").write_text("\n".join(sorted(official)) + "\n")
    (tmp_path / "something-something-v1-train.csv").write_text("1;Holding something\n")
    with pytest.raises(
        DataError,
        match=r"labels.csv:1: class .* where the official sthv1 order "
        r"has 'Holding something'",
    ):
        build_list("sthv1", tmp_path, tmp_path / "out")


def test_jester_official_and_sorted_orders_and_flip_pairs(tmp_path):
    official = labels("jester.txt")
    (tmp_path / "jester-v1-train.csv").write_text("34870;Drumming Fingers\r\n7;Swiping Right\r\n")
    (tmp_path / "jester-v1-validation.csv").write_text("8;Doing other things\n")
    root = tmp_path / "20bn-jester-v1"
    for vid in ("34870", "7", "8"):
        frames(root / vid, 2, "{:05d}.jpg")
    result = build_list("jester", root, tmp_path / "out", annotations=tmp_path)
    assert lines(result.lists["train"]) == [
        f"34870 2 {official.index('Drumming Fingers')}",
        "7 2 1",
    ]
    result = build_list("jester", root, tmp_path / "s", annotations=tmp_path, label_order="sorted")
    assert lines(result.lists["val"]) == ["8 2 0"]  # "Doing other things" sorts first
    manifest = load_manifest("jester")
    assert manifest.flip == "off"
    assert manifest.flip_pairs_for(official) == [(0, 1), (6, 7), (14, 15)]
    assert manifest.flip_pairs_for(sorted(official)) == [(16, 17), (11, 12), (21, 22)]
    with pytest.raises(UsageError, match="label order 'sorted' is not offered for ucf101"):
        build_list("ucf101", root, tmp_path / "u", label_order="sorted")


# ---------------------------------------------------------------------------- SSv2


def test_sthv2_json_templates_without_brackets(tmp_path):
    ssv2 = labels("sthv2.txt")
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "something-something-v2-labels.json").write_text(
        json.dumps({name: str(i) for i, name in enumerate(ssv2)})
    )
    (ann / "something-something-v2-train.json").write_text(
        json.dumps(
            [
                {
                    "id": "78687",
                    "label": "holding potato next to vicks vaporub bottle",
                    "template": "Holding [something] next to [something]",
                    "placeholders": ["potato", "x"],
                },
                {
                    "id": "36585",
                    "label": "plastic falling like a feather or paper",
                    "template": "[Something] falling like a feather or paper",
                    "placeholders": ["plastic"],
                },
            ]
        )
    )
    (ann / "something-something-v2-validation.json").write_text(
        json.dumps(
            [
                {
                    "id": "1",
                    "label": "x",
                    "template": "Pushing [something] from left to right",
                    "placeholders": ["x"],
                }
            ]
        )
    )
    (ann / "something-something-v2-test.json").write_text(json.dumps([{"id": "1420"}]))
    root = tmp_path / "frames"
    for vid in ("78687", "36585", "1"):
        frames(root / vid, 3, "{:06d}.jpg")  # the TSM extraction's names
    result = build_list("sthv2", root, tmp_path / "out", annotations=ann)
    assert result.template == "{:06d}.jpg"
    assert lines(result.lists["train"]) == [
        f"78687 3 {ssv2.index('Holding something next to something')}",
        f"36585 3 {ssv2.index('Something falling like a feather or paper')}",
    ]
    assert lines(result.lists["val"]) == ["1 3 93"]
    assert result.unlabeled == {"test": 1}
    manifest = load_manifest("sthv2")
    assert manifest.flip == "off" and manifest.flip_pairs == ((86, 87), (93, 94), (166, 167))
    assert manifest.test_protocol.twice_sample and manifest.test_protocol.crops == 3

    (ann / "something-something-v2-validation.json").write_text('[{"id": "1",\n "template": }]')
    with pytest.raises(DataError, match=r"validation.json:2: not valid JSON"):
        build_list("sthv2", root, tmp_path / "out", annotations=ann)


# ---------------------------------------------------------------------------- UCF101 / HMDB51


def _ucf_annotations(folder: Path) -> None:
    folder.mkdir(parents=True)
    ucf = labels("ucf101.txt")
    (folder / "classInd.txt").write_bytes(
        "".join(f"{i} {name}\r\n" for i, name in enumerate(ucf, start=1)).encode()
    )
    for split in (1, 2):
        group = "08" if split == 1 else "15"
        (folder / f"trainlist0{split}.txt").write_bytes(
            f"ApplyEyeMakeup/v_ApplyEyeMakeup_g{group}_c01.avi 1\r\n"
            f"HandstandPushups/v_HandStandPushups_g{group}_c01.avi 37\r\n".encode()
        )
        (folder / f"testlist0{split}.txt").write_bytes(
            b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nYoYo/v_YoYo_g01_c01.avi\r\n"
        )


def test_ucf101_official_splits_crlf_and_class_from_folder(tmp_path):
    ann, root = tmp_path / "ucfTrainTestlist", tmp_path / "rawframes"
    _ucf_annotations(ann)
    for name in (
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01",
        "HandstandPushups/v_HandStandPushups_g08_c01",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g15_c01",
    ):
        frames(root / name, 3)
    # the annotation folder is found one level below --annotations, as it unpacks
    result = build_list("ucf101", root, tmp_path / "out", annotations=tmp_path)
    assert lines(result.lists["train"]) == [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01 3 0",
        "HandstandPushups/v_HandStandPushups_g08_c01 3 36",
    ]
    assert lines(result.lists["val"]) == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01 3 0"]
    assert lines(result.missing_file) == ["val\tYoYo/v_YoYo_g01_c01\tnot found"]

    result = build_list("ucf101", root, tmp_path / "out2", annotations=ann, split=2)
    assert lines(result.lists["train"]) == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g15_c01 3 0"]
    assert result.num_missing == 2

    (ann / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01 1\r\nArchery/v_Archery_g08_c01.avi 7\r\n"
    )
    with pytest.raises(
        DataError, match=r"trainlist01.txt:2: label 7 does not match folder Archery"
    ):
        build_list("ucf101", root, tmp_path / "out3", annotations=ann)


def test_hmdb51_split_files_ids_and_missing_split_file(tmp_path, make_video):
    hmdb = labels("hmdb51.txt")
    ann = tmp_path / "testTrainMulti_7030_splits"
    ann.mkdir()
    for name in hmdb:
        (ann / f"{name}_test_split1.txt").write_text("")
    (ann / "brush_hair_test_split1.txt").write_bytes(
        b"April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \r\n"
        b"Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi 2 \r\n"
        b"unused_brush_hair_u_nm_np1_ba_goo_0.avi 0 \r\n"
    )
    (ann / "clap_test_split1.txt").write_text("#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi 1  \n\n")
    root = tmp_path / "videos"
    make_video(
        root / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi", num_frames=5, size=16
    )
    make_video(
        root / "brush_hair" / "Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi",
        num_frames=4,
        size=16,
    )
    make_video(root / "clap" / "#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi", num_frames=3, size=16)

    result = build_list("hmdb51", root, tmp_path / "out", annotations=tmp_path)
    assert result.source == "videos"
    assert lines(result.lists["train"]) == [
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi 5 0",
        f"clap/#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi 3 {hmdb.index('clap')}",
    ]
    assert lines(result.lists["val"]) == [
        "brush_hair/Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi 4 0"
    ]
    assert result.num_missing == 0

    (ann / "wave_test_split1.txt").unlink()
    with pytest.raises(DataError, match=r"testTrainMulti_7030_splits/wave_test_split1.txt: split file is missing"):
        build_list("hmdb51", root, tmp_path / "out", annotations=ann)


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


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("dataset", "file", "body"),
    [
        ("kinetics400", "kinetics_train.csv", b"label,youtube_id,time_start,time_end\nabseiling,"),
        ("jester", "jester-v1-train.csv", b"1;Swiping Left\n2;Swiping Left\n3;"),
        ("sthv2", "something-something-v2-train.json", b'[{"id": "1",\n"template": "'),
    ],
)
def test_an_annotation_file_that_is_not_utf8_names_the_line_and_byte(tmp_path, dataset, file, body):
    (tmp_path / file).write_bytes(b"\xef\xbb\xbf" + body + b"caf\xe9\n")  # BOM, then Latin-1
    offset = 3 + len(body) + 3
    with pytest.raises(DataError) as caught:
        build_list(dataset, tmp_path, tmp_path / "out")
    line = body.count(b"\n") + 1
    assert str(caught.value) == (
        f"{tmp_path / file}:{line}: not UTF-8 text (byte 0xe9 at offset {offset}); "
        "re-save the file as UTF-8"
    )


@pytest.mark.parametrize(
    ("start", "end"), [("inf", "10"), ("nan", "10"), ("-1", "9"), ("abc", "10"), ("0", "1e999")]
)
def test_kinetics_times_that_cannot_name_a_clip_are_refused(tmp_path, start, end):
    (tmp_path / "kinetics_train.csv").write_text(
        "label,youtube_id,time_start,time_end\n"
        "abseiling,0wR5jVB-WPk,417,427\n"
        f"abseiling,aaaaaaaaaaa,{start},{end}\n"
    )
    with pytest.raises(DataError) as caught:
        build_list("kinetics400", tmp_path, tmp_path / "out")
    assert str(caught.value) == (
        f"{tmp_path / 'kinetics_train.csv'}:3: time_start/time_end must be seconds (finite "
        f"numbers >= 0), got {start!r}, {end!r}; fix or remove this row"
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "7", "template": 12}, '"template" is a JSON number, not a string'),
        (
            {"id": "7", "template": ["Holding [something]"]},
            '"template" is a JSON array, not a string',
        ),
        ({"id": ["7"], "template": "Holding something"}, '"id" is a JSON array, not a string'),
        ("7;Holding something", "is a JSON string, not an object with"),
    ],
)
def test_sthv2_json_of_the_wrong_types_is_one_clear_error(tmp_path, entry, message):
    (tmp_path / "something-something-v2-train.json").write_text(
        json.dumps([{"id": "1", "template": "Holding something"}, entry])
    )
    with pytest.raises(DataError) as caught:
        build_list("sthv2", tmp_path, tmp_path / "out")
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'something-something-v2-train.json'}: entry 1")
    assert message in text and text.endswith("download the annotation file again")


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


@pytest.mark.parametrize("template", ["img_{:05d}.jpg", "{:06d}.jpg", "{}.png", "f{0:4d}.jpg"])
def test_good_templates_pass_unchanged(template):
    assert check_frame_template(template) == template


@pytest.mark.parametrize("under_a_file", [False, True])
def test_an_out_path_that_is_or_is_under_a_file_is_refused_before_any_work(
    tmp_path, monkeypatch, under_a_file
):
    _folder_dataset(tmp_path / "data", {"a": 2, "b": 2})
    (tmp_path / "lists").write_text("mine")
    out = tmp_path / "lists" / "k400" if under_a_file else tmp_path / "lists"
    measured = []
    monkeypatch.setattr(adapters, "_measure", lambda *args: measured.append(args) or (2, ""))
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

    monkeypatch.setattr(adapters, "_measure", measure)
    try:
        with deadline(30), pytest.raises(KeyboardInterrupt):
            build_list("folder", tmp_path / "data", tmp_path / "out", workers=3)
        assert len(started) <= 3  # at most one clip per thread was running
    finally:
        release.set()
    assert not (tmp_path / "out").exists()
