"""The fast checks of a run (tsm train at start, tsm doctor): the lr for the global batch,
mirroring, sided class names, and how train logs what it finds."""

from __future__ import annotations

import logging

import pytest

from tsmcli.data.lists import ListEntry, ListFile
from tsmcli.engine import run_checks
from tsmcli.engine.findings import Finding
from tsmcli.errors import DataError, RecipeError
from tsmcli.recipe import load_recipe


def test_the_lr_note_gives_the_global_batch_and_a_big_step_up_wants_warmup():
    recipe = load_recipe("kinetics_r50", ["optim.warmup_epochs=0"])  # lr 0.02 at 128
    (note,) = run_checks.learning_rate(recipe, processes=8)
    assert note.line == (
        "optim.lr 0.02 is for a global batch of 128 (optim.reference_batch_size); this run's "
        "is 16 a process x 8 process(es) = 128, so it trains at lr 0.02 (scaled linearly); to "
        "train at another lr, change optim.lr (given for the reference batch)"
    )
    one = run_checks.learning_rate(recipe, processes=1)
    assert [f.severity for f in one] == ["note"] and "trains at lr 0.0025" in one[0].message
    note, warmup = run_checks.learning_rate(recipe, processes=64)  # 8 nodes of 8
    assert "trains at lr 0.16" in note.message
    assert warmup.check == "recipe.warmup" and warmup.severity == "warning"
    assert "scaled up 8x (global batch 1024" in warmup.message
    warmed = load_recipe("kinetics_r50", ["optim.warmup_epochs=5"])
    assert len(run_checks.learning_rate(warmed, processes=64)) == 1


def test_batch_norm_warns_only_when_fine_tuning_small_batches_without_partial_bn():
    small = ["train.batch_size=4", "model.pretrained=null", "model.init_from=null"]
    assert run_checks.batch_norm(load_recipe("kinetics_r50", small), processes=1) == []
    tuned = load_recipe("kinetics_r50", ["train.batch_size=4"])  # from imagenet-resnet50
    (warning,) = run_checks.batch_norm(tuned, processes=1)
    assert warning.message.startswith("train.batch_size 4: batch norm normalises over 4 clips")
    synced = load_recipe("kinetics_r50", ["train.batch_size=4", "train.sync_bn=true"])
    assert len(run_checks.batch_norm(load_recipe("kinetics_r50", small[:1]), processes=4)) == 1
    assert run_checks.batch_norm(synced, processes=2) == []  # 8 clips across the processes
    partial = load_recipe("kinetics_r50", ["train.batch_size=4", "model.partial_bn=true"])
    assert run_checks.batch_norm(partial, processes=1) == []


@pytest.mark.parametrize(
    ("name", "sided"),
    [
        ("Swiping Left", True),
        ("moving_right", True),
        ("TurnLeft", True),
        ("rotating_counterclockwise", True),
        ("Pushing something from left to right", True),
        ("brush_hair", False),
        ("Copyright", False),  # "right" inside a word is no side
        ("playing_guitar", False),
    ],
)
def test_a_class_name_says_a_side(name, sided):
    assert run_checks.sided(name) is sided


def test_flip_on_with_a_manifest_that_pairs_classes_is_an_error(tmp_path):
    from tsmcli.data.manifest import load_manifest

    jester = load_manifest("jester").classes()
    recipe = load_recipe("kinetics_r50", ["data.dataset=jester", "data.flip=on"])
    (finding,) = run_checks.mirroring(recipe, jester, tmp_path / "train.txt")
    assert finding.severity == "error" and finding.kind is RecipeError
    assert finding.line == (
        "data.flip: on mirrors training clips and keeps their labels, but dataset jester's "
        "manifest pairs mirror-image classes (Swiping Left and Swiping Right): a mirrored clip "
        "of one would be trained as the other; set data.flip=swap (mirror and swap the pair's "
        "labels) or data.flip=off"
    )
    swapped = load_recipe("kinetics_r50", ["data.dataset=jester", "data.flip=swap"])
    assert run_checks.mirroring(swapped, jester, tmp_path / "train.txt") == []
    plain = load_recipe("kinetics_r50", ["data.dataset=kinetics400", "data.flip=on"])
    assert run_checks.mirroring(plain, ["abseiling", "zumba"], tmp_path / "train.txt") == []


def test_segments_name_the_shortest_video_and_its_line():
    listed = ListFile(
        "t.txt",
        [ListEntry("a", 40, 0), ListEntry("b", 5, 0), ListEntry("c", 3, 1)],
        lines=(1, 3, 4),
    )
    (finding,) = run_checks.segments(listed, 8)
    assert finding.message == (
        "t.txt: 2 of 3 videos have fewer frames than model.num_segments (8); the shortest is c "
        "(3 frames, line 4)"
    )
    assert run_checks.segments(listed, 3) == []


def test_train_stops_on_the_first_error_and_logs_three_warnings_a_check(caplog):
    warnings = [
        Finding("warning", "list.duplicates", f"t.txt:{k}: a again", "remove it") for k in range(5)
    ]
    note = Finding("note", "recipe.lr", "lr 0.1", "nothing to do")
    with caplog.at_level(logging.WARNING, logger="tsmcli"):
        run_checks.stop_or_log([*warnings, note], is_main=True)
    assert caplog.messages == [
        "t.txt:0: a again; remove it",
        "t.txt:1: a again; remove it",
        "t.txt:2: a again; remove it",
        "... and 2 more list.duplicates warnings (tsm doctor lists them all)",
    ]
    error = Finding("error", "list.labels", "t.txt:3: label 9", "fix it", kind=DataError)
    with pytest.raises(DataError, match=r"^t\.txt:3: label 9; fix it$"):
        run_checks.stop_or_log([*warnings, error], is_main=True)


def test_from_error_splits_at_the_last_semicolon_and_keeps_the_line():
    exc = DataError("a.txt:2: label 3 is outside 0..1 (x; y); fix the list")
    finding = Finding.from_error("list.labels", exc, "a.txt")
    assert (finding.message, finding.fix) == (
        "a.txt:2: label 3 is outside 0..1 (x; y)",
        "fix the list",
    )
    assert finding.line == str(exc) and finding.kind is DataError
    assert Finding.from_error("x", DataError("no fix here")).line == "no fix here"
