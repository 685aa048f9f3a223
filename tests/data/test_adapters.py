"""build_list on tiny copies of each dataset's annotation files (the formats of DATASETS.md)
and tiny frame folders: exact list contents, official label indices, missing clips, splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torchvision.io import encode_jpeg

from tsmcli.cli import cli
from tsmcli.data.adapters import build_list, load_manifest
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
