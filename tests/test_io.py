import numpy as np
import pandas as pd
import pytest
import tifffile

from protoseg import io
from protoseg.errors import InputError


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
