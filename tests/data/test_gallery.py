"""The one gallery reader and the one batch-padding helper."""
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fastslow_jax import parallel
from fastslow_jax.data.gallery import Gallery, ImageFiles


def test_pad_rows_repeats_the_first_row_for_arrays_jax_arrays_and_lists():
    x = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(parallel.pad_rows(x, 5), [[0, 1], [2, 3], [4, 5], [0, 1], [0, 1]])
    assert parallel.pad_rows(x, 3) is x and parallel.pad_rows(x, 2) is x  # nothing to pad
    y = parallel.pad_rows(jnp.asarray(x), 4)
    assert isinstance(y, jnp.ndarray) and y.tolist() == [[0, 1], [2, 3], [4, 5], [0, 1]]
    assert parallel.pad_rows(["a", "b"], 4) == ["a", "b", "a", "a"]
    np.testing.assert_array_equal(parallel.pad_rows(np.array([7, 8]), 3), [7, 8, 7])


def test_gallery_batches_are_in_order_with_the_last_one_padded_and_subsets_read_through():
    images = np.arange(7 * 2 * 2 * 3, dtype=np.uint8).reshape(7, 2, 2, 3)
    g = Gallery(lambda i: images[i], 7)
    batches = list(g.image_batches(3))
    assert [n for _, n in batches] == [3, 3, 1]
    assert all(b.shape == (3, 2, 2, 3) for b, _ in batches)
    np.testing.assert_array_equal(np.concatenate([b[:n] for b, n in batches]), images)
    np.testing.assert_array_equal(batches[-1][0], images[[6, 6, 6]])  # padded by its own first image
    sub = g.subset([5, 1, 3])
    assert sub.num_images == 3
    np.testing.assert_array_equal(sub.images([0, 2]), images[[5, 3]])
    np.testing.assert_array_equal(np.concatenate([b[:n] for b, n in sub.image_batches(2)]), images[[5, 1, 3]])


def test_image_files_read_a_folder_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    for name, colour in (("b/z.png", (0, 0, 255)), ("a.jpg", (255, 0, 0)), ("b/c.png", (0, 255, 0))):
        Image.new("RGB", (8, 4), colour).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    g = ImageFiles.from_folder(str(tmp_path), (4, 4))
    assert [p[len(str(tmp_path)) + 1:] for p in g.paths] == ["a.jpg", "b/c.png", "b/z.png"]
    got = g.images(range(3))
    assert got.shape == (3, 4, 4, 3) and got.dtype == np.uint8
    assert got[0, 0, 0, 0] > 200 and got[1, 0, 0, 1] > 200 and got[2, 0, 0, 2] > 200
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        ImageFiles.from_folder(str(tmp_path / "nope"), (4, 4))
