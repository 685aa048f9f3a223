"""The README shows what the commands print. Every example marked ``<!-- example -->`` (a block
of commands, then a block of their output) is run on a demo's output and compared with what it
shows; every number the README quotes from a benchmark is in BENCHMARKS.md.

On a small demo (the default, in ``make test``) the comparison is by structure: the same lines,
with any class name where the README shows one and any number where it shows one. On the
demo the README was made from (``make readme``: ``TSM_README_DEMO`` names its folder), on a
CPU of the instruction set the README names, it is exact but for times and speeds.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "BENCHMARKS.md"
MARK = re.compile(r"^<!-- example(?P<stderr> \+stderr)? -->$")
FENCE = re.compile(r"^```[a-z]*$")
# the machine the examples' output comes from, as the README names it
MADE_ON = re.compile(r"<!-- examples made on: (?P<isa>\w+) -->")
NUMBER = re.compile(r"\d+(?:\.\d+)?")
# numbers that change from run to run: times and speeds
VOLATILE = re.compile(r"\s*\d+(?:\.\d+)?(?= ms\b)|(?<=videos/s)\s+\d+(?:\.\d+)?")
PORT = "8000"
# the header of a counted list ("actions (4):"), whose length a small demo's models change
COUNTED = re.compile(r"^\s*[a-z][\w ]* \((\d+)\):$")


@dataclass(frozen=True)
class Example:
    line: int  # of the marker, for messages
    commands: str
    output: list[str]
    stderr: bool  # the output's last line is the last line the command wrote on stderr


def examples(text: str) -> list[Example]:
    """The marked examples: the fenced block after each marker, and the fenced block after it."""
    lines = text.splitlines()
    found = []
    for number, line in enumerate(lines):
        mark = MARK.match(line)
        if mark:
            commands, after = _block(lines, number + 1)
            output, _ = _block(lines, after)
            found.append(Example(number + 1, "\n".join(commands), output, bool(mark["stderr"])))
    return found


def _block(lines: list[str], start: int) -> tuple[list[str], int]:
    """The lines of the first fenced block at or after ``start``, and the line after it."""
    begin = next(i for i in range(start, len(lines)) if FENCE.match(lines[i]))
    end = next(i for i in range(begin + 1, len(lines)) if lines[i] == "```")
    return lines[begin + 1 : end], end + 1


def run_example(example: Example, cwd: Path, port: str) -> list[str]:
    """Run the commands as the README says (a server line in a background shell of its own),
    with the venv's ``tsm`` and ``python`` first on the PATH; the lines they print."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("TSM_DEBUG", None)
    script = example.commands.replace(PORT, port).replace("\\\n", " ")
    servers = [line for line in script.splitlines() if "http.server" in line]
    rest = "\n".join(line for line in script.splitlines() if "http.server" not in line)
    background = [
        subprocess.Popen(
            ["bash", "-c", line],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the server goes with the shell
        )
        for line in servers
    ]
    try:
        for _ in range(100) if background else ():
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", int(port))) == 0:
                    break
            subprocess.run(["sleep", "0.1"], check=True)
        done = subprocess.run(
            ["bash", "-e", "-c", rest],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        for server in background:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert done.returncode == 0, f"README line {example.line}: {done.stderr[-2000:]}"
    printed = done.stdout.splitlines()
    if example.stderr:
        printed.append(done.stderr.strip().splitlines()[-1])
    return printed


def pattern(shown: str, classes: list[str], exact: bool) -> re.Pattern[str]:
    """What a printed line must look like to be the line the README shows: exact but for
    times and speeds, or (``exact=False``) any class where a class is shown and any number
    where a number is, with any run of spaces for one."""
    names = "|".join(sorted(map(re.escape, classes), key=len, reverse=True))
    tokens = VOLATILE if exact else re.compile(rf"{NUMBER.pattern}|\b(?:{names})\b|\s+")
    parts, last = [], 0
    for match in tokens.finditer(shown):
        parts.append(re.escape(shown[last : match.start()]))
        token = match.group()
        if token.isspace():
            parts.append(r"\s+")
        elif token.strip()[0].isdigit():
            parts.append((r"\s+" if token[0].isspace() else "") + NUMBER.pattern)
        else:
            parts.append(rf"(?:{names})")
        last = match.end()
    parts.append(re.escape(shown[last:]))
    return re.compile("".join(parts))


def fold(lines: list[str]) -> list[tuple[str, list[str]]]:
    """Each line with the items of the counted list it heads (none for other lines)."""
    folded, at = [], 0
    while at < len(lines):
        head = COUNTED.match(lines[at])
        count = int(head[1]) if head else 0
        folded.append((lines[at], lines[at + 1 : at + 1 + count]))
        at += 1 + count
    return folded


def assert_shows(example: Example, printed: list[str], classes: list[str], exact: bool) -> None:
    """The printed lines are the shown ones; by structure, a counted list may be of any length
    as long as each of its items looks like one the README shows."""
    shown = [line.replace(PORT, "PORT") for line in example.output]
    got = [re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{PORT}", line) for line in printed]
    got = [line.replace(PORT, "PORT") for line in got]
    wanted, lines = ([(line, []) for line in shown], [(line, []) for line in got])
    if not exact:
        wanted, lines = fold(shown), fold(got)
    assert len(lines) == len(wanted), (
        f"README line {example.line}: {len(shown)} lines shown, {len(got)} printed:\n"
        + "\n".join(got)
    )
    for (want, items), (line, found) in zip(wanted, lines, strict=True):
        assert pattern(want, classes, exact).fullmatch(line.rstrip()), (
            f"README line {example.line}: shows\n  {want}\nbut the command printed\n  {line}"
        )
        looks = [pattern(item, classes, exact) for item in items]
        for item in found:
            assert any(like.fullmatch(item.rstrip()) for like in looks), (
                f"README line {example.line}: under {want.strip()} printed\n  {item}\n"
                "which looks like none of the items the README shows"
            )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A folder holding ``demo_out``: the demo the README was made from (``TSM_README_DEMO``),
    or a small one with the same file names (10 videos a class, one epoch a model)."""
    given = os.environ.get("TSM_README_DEMO")
    cwd = tmp_path_factory.mktemp("readme")
    if given:
        (cwd / "demo_out").symlink_to(Path(given).resolve())
        return cwd
    from tsmcli.showcase import demo

    demo(cwd / "demo_out", per_class=10, epochs=1, overrides=["train.batch_size=4"])
    return cwd


def test_every_example_prints_what_the_readme_shows(demo_dir):
    from tsmcli.data.lists import read_classes
    from tsmcli.showcase.clock import cpu_isa

    text = README.read_text()
    made_on = MADE_ON.search(text)
    assert made_on, "the README says which instruction set its examples were made on"
    exact = bool(os.environ.get("TSM_README_DEMO")) and cpu_isa() == made_on["isa"]
    classes = read_classes(demo_dir / "demo_out" / "lists" / "classes.txt")
    found = examples(text)
    assert len(found) >= 3
    for example in found:
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = str(free.getsockname()[1])
        printed = run_example(example, demo_dir, port)
        assert_shows(example, printed, classes, exact)


def test_numbers_quoted_from_benchmarks_are_in_benchmarks_md():
    """A paragraph that names a bench script quotes only ratios and counts BENCHMARKS.md has."""
    benchmarks = BENCHMARKS.read_text()
    quoted = 0
    for paragraph in README.read_text().split("\n\n"):
        if "`bench/" not in paragraph:
            continue
        for ratio in re.findall(r"\b\d+\.\d{2,3}(?=x\b)", paragraph):
            assert ratio in benchmarks, f"README quotes {ratio}x, which BENCHMARKS.md does not have"
            quoted += 1
    assert quoted > 0


def test_the_pattern_matches_like_the_readme_means():
    classes = ["moving_left", "moving_right", "growing"]
    loose = pattern("frame     3     7.30 ms  moving_left 0.857  growing 0.142", classes, False)
    assert loose.fullmatch("frame     3    12.10 ms  growing 0.5  moving_right 0.25")
    assert not loose.fullmatch("frame     3    12.10 ms  growing 0.5")
    exact = pattern("frame     3     7.30 ms  moving_left 0.857  growing 0.142", classes, True)
    assert exact.fullmatch("frame     3     9.99 ms  moving_left 0.857  growing 0.142")
    assert exact.fullmatch("frame     3    10.99 ms  moving_left 0.857  growing 0.142")
    assert not exact.fullmatch("frame     3     9.99 ms  moving_left 0.858  growing 0.142")
    assert pattern("videos/s    2.0", classes, True).fullmatch("videos/s    13.5")


def test_a_counted_list_may_have_another_length_by_structure():
    example = Example(
        1,
        "",
        ["actions (2):", "  0.00-3.00 s  growing 0.5", "  3.00-4.00 s  growing 0.4", "done"],
        False,
    )
    classes = ["growing", "shrinking"]
    assert_shows(example, ["actions (0):", "done"], classes, exact=False)
    assert_shows(example, ["actions (1):", "  1.00-2.00 s  shrinking 0.9", "done"], classes, False)
    with pytest.raises(AssertionError, match="looks like none"):
        assert_shows(example, ["actions (1):", "  shrinking", "done"], classes, exact=False)
    with pytest.raises(AssertionError, match="lines shown"):
        assert_shows(example, ["actions (0):", "done"], classes, exact=True)
