import io

import numpy as np
import pytest

from components.archive import ArchiveWriter, open_archive
from components.errors import DataError


def _row(i):
    return {
        "source_file": f"f{i}",
        "source_sha256": "0" * 64,
        "patient": "p",
        "label": "normal",
        "label_idx": 0,
        "modality": "CT",
        "pixel_spacing_row": 1.0,
        "pixel_spacing_col": 1.0,
        "orig_rows": 8,
        "orig_cols": 8,
    }


def _npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize(("capacity", "n"), [(10, 7), (3, 7), (7, 7), (1, 1)])
def test_compacted_or_grown_arrays_are_exactly_what_np_save_writes(tmp_path, capacity, n):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (n, 8, 8)).astype(np.float32)
    masks = (rng.uniform(0, 1, (n, 8, 8)) > 0.5).astype(np.uint8)
    with ArchiveWriter(tmp_path / "a", capacity, 8) as writer:
        for i in range(n):
            writer.add(images[i], masks[i], _row(i))
        writer.commit({"classes": ["normal"], "lesion_classes": []})
    assert (tmp_path / "a" / "images.npy").read_bytes() == _npy_bytes(images)
    assert (tmp_path / "a" / "masks.npy").read_bytes() == _npy_bytes(masks)
    archive = open_archive(tmp_path / "a")
    assert len(archive) == n and archive.meta["n"] == n
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary folder left behind


def test_leaving_without_commit_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), ArchiveWriter(tmp_path / "a", 4, 8) as writer:
        writer.add(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8), _row(0))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="not a dataset archive"):
        open_archive(tmp_path / "a")
