"""The on-disk naming rules: frame templates, video extensions, the two kinds of source."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsmcli.data.layout import (
    FRAME_TEMPLATE,
    SOURCES,
    check_frame_template,
    check_source,
    is_video,
)
from tsmcli.errors import UsageError


@pytest.mark.parametrize("template", ["img_{:05d}.jpg", "{:06d}.jpg", "{}.png", "f{0:4d}.jpg"])
def test_good_templates_pass_unchanged(template):
    assert check_frame_template(template) == template


def test_the_default_template_names_frames_from_img_00001():
    assert [FRAME_TEMPLATE.format(k) for k in (1, 12)] == ["img_00001.jpg", "img_00012.jpg"]


def test_a_source_is_frames_or_videos_and_anything_else_is_a_usage_error():
    assert [check_source(s) for s in SOURCES] == ["frames", "videos"]
    with pytest.raises(UsageError) as caught:
        check_source("clips")
    assert str(caught.value) == "source must be one of frames, videos, got 'clips'"


def test_a_video_is_known_by_its_extension_in_any_case():
    names = ["a.mp4", "b.AVI", "c.webm", "d.MkV", "e.mov", "f.jpg", "g.mp4.part", "mp4"]
    assert [is_video(Path(n)) for n in names] == [True] * 5 + [False] * 3
