"""protoseg.io.atomic_dir: folder outputs (bioimage.io packages, OME-Zarr) written whole or
not at all, as atomic_path writes files."""

from __future__ import annotations

import pytest

from protoseg import io
from protoseg.errors import OutputError


def test_a_new_folder_appears_whole(tmp_path):
    target = tmp_path / "sub" / "package"
    with io.atomic_dir(target) as folder:
        (folder / "a.txt").write_text("a")
        assert not target.exists()  # nothing visible while it is written
    assert (target / "a.txt").read_text() == "a"
    assert sorted(p.name for p in target.parent.iterdir()) == ["package"]


def test_an_existing_folder_is_replaced_or_kept_on_failure(tmp_path):
    target = tmp_path / "package"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="crash"):
        with io.atomic_dir(target) as folder:
            (folder / "new.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with io.atomic_dir(target) as folder:
        (folder / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package"]


def test_leftovers_of_a_killed_writer_are_removed(tmp_path):
    stale = tmp_path / ".package.abc123.tmpdir"
    stale.mkdir()
    (stale / "x").write_text("x")
    with io.atomic_dir(tmp_path / "package") as folder:
        (folder / "y").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package"]


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "package").write_text("a file")
    with pytest.raises(OutputError, match=r"package: exists and is not a folder"):
        with io.atomic_dir(tmp_path / "package"):
            pass
