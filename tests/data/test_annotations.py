"""Each dataset family's annotation files, read through build_list on tiny copies of them
(the formats of DATASETS.md) and tiny frame folders: exact list contents, official label
indices, missing clips, and one clear line for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from annotated_clips import frames, labels, lines

from tsmcli.data.annotations import FOLDER, FORMATS
from tsmcli.data.build_list import build_list
from tsmcli.data.lists import read_classes
from tsmcli.data.manifest import list_manifests, load_manifest
from tsmcli.errors import DataError, UsageError


def test_every_shipped_manifest_names_a_registered_family():
    adapters = {load_manifest(name).adapter for name in list_manifests()}
    assert adapters - {FOLDER} == set(FORMATS)  # no manifest without a reader, no idle reader


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
    assert manifest.test_protocol == "sthv2"  # twice-sampled clips x 3 full-res crops

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
    with pytest.raises(
        DataError, match=r"testTrainMulti_7030_splits/wave_test_split1.txt: split file is missing"
    ):
        build_list("hmdb51", root, tmp_path / "out", annotations=ann)


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
