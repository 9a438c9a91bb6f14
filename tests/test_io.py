import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg import io
from protoseg.errors import InputError, OutputError


def test_atomic_path_leaves_target_untouched_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_writers_create_parents_and_round_trip(tmp_path):
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    io.write_tiff(tmp_path / "a" / "mask.tif", labels)
    assert np.array_equal(tifffile.imread(tmp_path / "a" / "mask.tif"), labels)
    io.write_csv(tmp_path / "b" / "t.csv", pd.DataFrame({"x": [1, 2]}))
    assert pd.read_csv(tmp_path / "b" / "t.csv")["x"].tolist() == [1, 2]
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0] = 255
    io.write_png(tmp_path / "c.png", rgb)
    back = io.read_image(tmp_path / "c.png")
    assert back.shape == (5, 6, 3) and back[0, 0].tolist() == [255, 0, 0]  # RGB order kept


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"missing\.tif: file not found"):
        io.read_image(tmp_path / "missing.tif")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match=r"bad\.png: unreadable or truncated image"):
        io.read_image(bad)
    odd = tmp_path / "x.gif"
    odd.write_bytes(b"GIF89a")
    with pytest.raises(InputError, match=r"x\.gif: unsupported image type"):
        io.read_image(odd)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((2, 3, 4, 5), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match=r"stack\.tif: expected a 2D greyscale or colour image"):
        io.read_image(stack)


def test_atomic_outputs_get_normal_file_permissions(tmp_path):
    io.write_text(tmp_path / "note.txt", "hi")
    mode = (tmp_path / "note.txt").stat().st_mode & 0o777
    assert mode & 0o044  # readable by group/others unless the umask forbids it


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    def no_space(path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.tifffile, "imwrite", no_space)
    target = tmp_path / "masks" / "z12.tif"
    with pytest.raises(OutputError, match=r"masks/z12\.tif: could not write it: the disk is full"):
        io.write_tiff(target, np.zeros((2, 2), np.uint16))
    assert list((tmp_path / "masks").iterdir()) == []


def test_torch_save_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")

    def failing_save(obj, path, *args, **kwargs):
        # What torch.save raises when its zip writer hits a full disk: no errno, no file.
        raise RuntimeError(
            "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing "
            "file data/0: file write failed; basic_ios::clear: iostream error"
        )

    monkeypatch.setattr(torch, "save", failing_save)
    target = tmp_path / "model.pt"
    with pytest.raises(OutputError) as caught:
        with io.atomic_path(target) as tmp:
            torch.save({"weights": 1}, tmp)
    message = str(caught.value)
    assert message.startswith(f"{target}: could not write it")
    assert "disk is full" in message and "basic_ios::clear" in message
    assert list(tmp_path.iterdir()) == []


def test_torch_save_closing_after_a_failed_write_names_the_file(tmp_path, monkeypatch):
    """torch.save on a full disk raises twice: the failed write, then, closing its zip,
    "[enforce fail at inline_container.cc:672] . unexpected pos": the second is what escapes."""
    torch = pytest.importorskip("torch")

    def failing_save(obj, path, *args, **kwargs):
        try:
            raise RuntimeError("basic_ios::clear: iostream error")
        finally:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
            )

    monkeypatch.setattr(torch, "save", failing_save)
    target = tmp_path / "checkpoints" / "epoch-003.pt"
    with pytest.raises(OutputError) as caught:
        with io.atomic_path(target) as tmp:
            torch.save({"weights": 1}, tmp)
    message = str(caught.value)
    assert message.startswith(f"{target}: could not write it")
    assert "disk is full" in message
    assert list(target.parent.iterdir()) == []


def test_other_errors_inside_a_write_keep_their_own_message(tmp_path):
    with pytest.raises(RuntimeError, match="loss became nan"):
        with io.atomic_path(tmp_path / "a.pt"):
            raise RuntimeError("loss became nan")
    with pytest.raises(FileNotFoundError):
        with io.atomic_path(tmp_path / "b.csv"):
            open(tmp_path / "some-input.csv").close()
    with pytest.raises(OutputError, match=r"c\.csv: could not write it \(PermissionError"):
        with io.atomic_path(tmp_path / "c.csv") as tmp:
            raise PermissionError(13, "Permission denied", str(tmp))
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "catalogue.csv"
    stale = tmp_path / ".catalogue.csv.abc123.tmp.csv"
    stale.write_text("half written by a process killed with -9")
    other = tmp_path / ".other.csv.abc123.tmp.csv"
    other.write_text("another target's")
    io.write_csv(target, pd.DataFrame({"x": [1]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, target.name]
