"""fileio: the one atomic write (modes, failures, full disk), stale temps, output path checks."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tsmcli import fileio
from tsmcli.errors import OutputError, RecipeError, UsageError


@pytest.fixture
def umask():
    """Set the process umask for one test (it is process-wide: restored after)."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def test_atomic_write_text_bytes_and_callback(tmp_path):
    path = fileio.atomic_write(tmp_path / "sub" / "a.txt", "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()  # UTF-8, newlines as given
    fileio.atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    fileio.atomic_write_with(tmp_path / "b.bin", lambda handle: handle.write(b"abc"))
    assert (tmp_path / "b.bin").read_bytes() == b"abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "sub"]  # no temp files


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_new_files_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    for path in (
        fileio.atomic_write(tmp_path / "a.txt", "x"),
        fileio.atomic_write_with(tmp_path / "b.png", lambda h: h.write(b"x")),
        fileio.atomic_link(tmp_path / "a.txt", tmp_path / "c.txt"),
    ):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = fileio.atomic_write(tmp_path / "last.pt", b"old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("serialiser failed")

    with pytest.raises(RuntimeError, match="serialiser failed"):
        fileio.atomic_write_with(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class FullDisk:
    """A file on a disk with ``left`` bytes free."""

    def __init__(self, handle, code: int, left: int = 10):
        self.handle, self.code, self.left = handle, code, left

    def write(self, data):
        if len(data) > self.left:
            raise OSError(self.code, os.strerror(self.code))
        self.left -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)


def swallows_the_errno(handle):
    """A writer that reports a failed write as its own error, as torch.save does on a full
    disk ("[enforce fail at inline_container.cc:672] . unexpected pos ...")."""
    try:
        handle.write(b"x" * 100)
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("writer", ["plain", "errno dropped"])
def test_a_full_disk_is_one_line_naming_the_folder(tmp_path, monkeypatch, code, writer):
    path = fileio.atomic_write(tmp_path / "last.pt", b"old")
    fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(fdopen(*a, **k), code))
    write = swallows_the_errno if writer == "errno dropped" else (lambda h: h.write(b"x" * 100))
    with pytest.raises(OutputError) as info:
        fileio.atomic_write_with(path, write)
    what = "no space left on" if code == errno.ENOSPC else "disk quota exceeded on"
    assert str(info.value) == (
        f"{what} {tmp_path.resolve()} while writing last.pt; free some "
        "space and run again (the previous last.pt, if any, is unchanged)"
    )
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_other_failures_stay_what_they_are(tmp_path, monkeypatch):
    path = fileio.atomic_write(tmp_path / "last.pt", b"old")
    fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(fdopen(*a, **k), errno.EIO))
    with pytest.raises(OSError) as info:
        fileio.atomic_write_with(path, lambda h: h.write(b"x" * 100))
    assert info.value.errno == errno.EIO and not isinstance(info.value, OutputError)
    with pytest.raises(OSError, match="Input/output error"):  # the errno a writer dropped
        fileio.atomic_write_with(path, swallows_the_errno)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_link_gives_a_second_name_that_survives_a_replace(tmp_path):
    last = fileio.atomic_write(tmp_path / "last.pt", b"epoch 1")
    fileio.atomic_write(tmp_path / "best.pt", b"older best")
    best = fileio.atomic_link(last, tmp_path / "best.pt")
    assert best.read_bytes() == b"epoch 1" and best.stat().st_ino == last.stat().st_ino
    fileio.atomic_write(last, b"epoch 2")  # a new file renamed over last.pt
    assert best.read_bytes() == b"epoch 1" and last.read_bytes() == b"epoch 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_remove_stale_temps_removes_only_our_pattern_for_the_names_given(tmp_path):
    ours = [".last.pt.0badf00d.tmp", ".curves.png.12345678.tmp"]
    others = [
        ".last.pt.tmp",
        ".last.pt.0BADF00D.tmp",
        ".notes.txt.0badf00d.tmp",
        "last.pt.0badf00d.tmp",
        "last.pt",
        ".last.pt.0badf00d.tmp.keep",
    ]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".best.pt.abcdef01.tmp").mkdir()  # a folder of that name is not our temp file
    removed = fileio.remove_stale_temps(tmp_path, ["last.pt", "curves.png", "best.pt"])
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + [".best.pt.abcdef01.tmp"])
    assert fileio.remove_stale_temps(tmp_path / "missing", ["last.pt"]) == []
    temp = fileio.temp_path(tmp_path / "last.pt")  # what the writer names its temp files
    temp.write_bytes(b"x")
    assert fileio.remove_stale_temps(tmp_path, ["last.pt"]) == [temp]


def test_check_writable_dir_and_file(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    fileio.check_writable_dir(tmp_path / "dir", "--out")  # exists
    fileio.check_writable_dir(tmp_path / "new" / "deeper", "--out")  # can be created
    fileio.check_writable_file(tmp_path / "new" / "eval.json", "--json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]  # nothing created
    with pytest.raises(UsageError) as info:
        fileio.check_writable_dir(tmp_path / "file", "--out")
    assert str(info.value) == f"--out {tmp_path / 'file'}: is a file, not a folder; choose a folder"
    with pytest.raises(RecipeError) as info:
        fileio.check_writable_dir(tmp_path / "file" / "run", "train.out_dir", RecipeError)
    assert str(info.value) == (
        f"train.out_dir {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} "
        "is a file, not a folder; choose another path"
    )
    with pytest.raises(UsageError, match=r"--json .*dir: is a folder; give a file name"):
        fileio.check_writable_file(tmp_path / "dir", "--json")
    with pytest.raises(UsageError, match=r"file is a file, not a folder"):
        fileio.check_writable_file(tmp_path / "file" / "eval.json", "--json")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match=r"dangling is a broken symbolic link"):
        fileio.check_writable_dir(tmp_path / "dangling" / "run", "--out")


def test_check_writable_dir_refuses_a_folder_without_write_permission(tmp_path, monkeypatch):
    # Tests may run as root, for whom every folder is writable: ask os.access what we need.
    denied = tmp_path / "readonly"
    denied.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != denied and real_access(p, mode))
    with pytest.raises(UsageError, match=r"readonly is not writable \(permission denied\)"):
        fileio.check_writable_dir(denied / "run", "--out")


def test_a_fifo_is_written_through_not_replaced(tmp_path):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    fileio.atomic_write(fifo, b'{"top1": 1}\n')
    reader.join(timeout=10)
    assert received == [b'{"top1": 1}\n']
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the FIFO, no regular file in its place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_dev_paths_are_written_through_and_appended(tmp_path):
    shell_file = tmp_path / "out.txt"
    shell_file.write_text("printed before\n")
    with open(shell_file, "ab") as handle:  # what a shell's `> out.txt` hands a command as fd 1
        link = f"/proc/self/fd/{handle.fileno()}"
        assert fileio.writes_through(link) and fileio.writes_through("/dev/null")
        fileio.atomic_write(link, "the json\n")
    assert shell_file.read_text() == "printed before\nthe json\n"  # appended, never truncated
    fileio.atomic_write("/dev/null", "gone\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not fileio.writes_through(shell_file) and not fileio.writes_through(tmp_path / "new")


def test_check_outputs_keeps_inputs_one_path_per_output_and_existing_files(tmp_path):
    checkpoint = tmp_path / "c.pt"
    checkpoint.write_bytes(b"weights")
    (tmp_path / "alias.pt").symlink_to(checkpoint)
    old = tmp_path / "old.json"
    old.write_text("{}")

    def refused(files, overwrite=False):
        with pytest.raises(UsageError) as info:
            fileio.check_outputs(files, [checkpoint, None], overwrite=overwrite)
        return str(info.value)

    out = fileio.outputs
    for name in ("c.pt", "alias.pt"):  # by its own name or another
        assert refused(out(json=tmp_path / name), overwrite=True) == (
            f"--json {tmp_path / name}: is an input of this command ({checkpoint}); writing it "
            "would destroy that input, so choose another path"
        )
    same = tmp_path / "p.txt"
    assert refused(out(json=same, csv=tmp_path / "." / "p.txt")) == (
        f"--json {same} and --csv {tmp_path / '.' / 'p.txt'}: the same file; give each output "
        "its own path"
    )
    assert refused(out(json=old)) == (
        f"--json {old}: already exists; pass --overwrite to replace it, or choose another path"
    )
    fileio.check_outputs(out(json=old, csv=tmp_path / "new.csv"), [checkpoint], overwrite=True)
    devnull = out(json="/dev/null", csv="/dev/null")  # written through: may be shared
    fileio.check_outputs(devnull, [checkpoint], overwrite=False)
    assert fileio.outputs(out_csv="a", json=None) == [fileio.Output("--out-csv", Path("a"))]


def test_exclusive_lock_refuses_a_second_holder_and_is_taken_over_after_a_kill(tmp_path):
    import subprocess
    import sys

    lock = tmp_path / ".lock"

    def busy(pid):
        return OutputError(f"held by {pid}")

    with fileio.exclusive_lock(lock, busy):
        assert lock.read_text() == f"{os.getpid()}\n"
        script = (
            "import sys; from pathlib import Path; from tsmcli import fileio\n"
            "from tsmcli.errors import OutputError\n"
            "try:\n"
            "    with fileio.exclusive_lock(Path(sys.argv[1]), lambda p: OutputError(p)): pass\n"
            "except OutputError as e: print('busy', e)\n"
        )
        other = subprocess.run([sys.executable, "-c", script, str(lock)], capture_output=True)
        assert other.stdout.decode().strip() == f"busy {os.getpid()}"
    assert not lock.exists()  # freed and removed at the end of the block
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tsmcli import fileio\n"
            "with fileio.exclusive_lock(sys.argv[1], RuntimeError):\n"
            "    print('held', flush=True); time.sleep(60)\n",
            str(lock),
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout.readline().strip() == b"held"
    with (
        pytest.raises(OutputError, match=f"held by {holder.pid}"),
        fileio.exclusive_lock(lock, busy),
    ):
        pass
    holder.kill()  # kill -9: the lock file stays, the kernel's lock goes with the process
    holder.wait()
    assert lock.exists()
    with fileio.exclusive_lock(lock, busy):  # a stale lock is taken over
        assert lock.read_text() == f"{os.getpid()}\n"


def test_a_line_log_on_a_full_disk_keeps_its_lines_and_names_the_file(tmp_path):
    path = tmp_path / "events.jsonl"
    log = fileio.LineLog(path)
    log.write_line('{"index": 0}')
    log._handle = FullDisk(log._handle, errno.ENOSPC, left=0)
    with pytest.raises(OutputError) as info:
        log.write_line('{"index": 1}')
    log.close()
    assert str(info.value) == (
        f"no space left on the disk of {path} while writing it; the lines before this one are "
        "kept: free some space and run again"
    )
    assert path.read_text() == '{"index": 0}\n'
