import numpy as np
import pytest

from fastslow_jax.data import pipeline, shapes
from tests.conftest import tiny_config


def _rows(batch):
    return {(b.tobytes(), t.tobytes()) for b, t in zip(batch["image"], batch["tokens"])}


def test_train_batches_are_deterministic_and_real():
    cfg = tiny_config()
    tok = pipeline.make_tokenizer(cfg.data)
    a = pipeline.train_dataset(cfg, tok)
    b = pipeline.train_dataset(cfg, tok)
    for i in range(3):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
        np.testing.assert_array_equal(a[i]["tokens"], b[i]["tokens"])
    batch = a[0]
    assert batch["image"].shape == (cfg.train.batch_size, 64, 64, 3) and batch["image"].dtype == np.uint8
    assert batch["tokens"].shape == (cfg.train.batch_size, cfg.data.max_len)
    # every image in a batch is a real training image, paired with one of its own captions
    spec = shapes.ShapesSpec(**{k: v for k, v in dict(image_size=64, num_train=256, num_val=64,
                                                            num_test=64).items()})
    train = {ex["image"].tobytes(): ex["captions"] for ex in shapes.generate_split(spec, "train")}
    for image, tokens in zip(batch["image"], batch["tokens"]):
        caps = train[image.tobytes()]
        assert tok.decode(tokens) in caps


def test_epochs_are_reshuffled_and_cover_the_split():
    cfg = tiny_config()
    tok = pipeline.make_tokenizer(cfg.data)
    ds = pipeline.train_dataset(cfg, tok)
    per_epoch = 256 // cfg.train.batch_size
    epoch0 = [r[0] for i in range(per_epoch) for r in _rows(ds[i])]
    epoch1 = [r[0] for i in range(per_epoch, 2 * per_epoch) for r in _rows(ds[i])]
    assert len(set(epoch0)) == 256 and set(epoch0) == set(epoch1)
    order0 = [ds[0]["image"][j].tobytes() for j in range(4)]
    order1 = [ds[per_epoch]["image"][j].tobytes() for j in range(4)]
    assert order0 != order1


def test_two_processes_split_each_global_batch_exactly():
    cfg = tiny_config()
    tok = pipeline.make_tokenizer(cfg.data)
    single = pipeline.train_dataset(cfg, tok, process_index=0, process_count=1)
    p0 = pipeline.train_dataset(cfg, tok, process_index=0, process_count=2)
    p1 = pipeline.train_dataset(cfg, tok, process_index=1, process_count=2)
    for i in range(3):
        assert p0[i]["image"].shape[0] == cfg.train.batch_size // 2
        # process 0's rows, then process 1's, are the single-process batch row for row (order and repeats count)
        for key in ("image", "tokens"):
            np.testing.assert_array_equal(np.concatenate([p0[i][key], p1[i][key]]), single[i][key])


def test_iterator_state_resumes_the_same_batches():
    cfg = tiny_config()
    tok = pipeline.make_tokenizer(cfg.data)
    it = pipeline.train_iterator(pipeline.train_dataset(cfg, tok))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    it2 = pipeline.train_iterator(pipeline.train_dataset(cfg, tok))
    it2.set_state(state)
    for want in expected:
        got = next(it2)
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        np.testing.assert_array_equal(got["image"], want["image"])


def test_eval_split_captions_and_padding():
    cfg = tiny_config()
    split = pipeline.EvalSplit(cfg.data, "test")
    assert split.num_images == 64 and len(split.captions) == 64 * 5
    np.testing.assert_array_equal(split.caption_to_image, np.repeat(np.arange(64), 5))
    batches = list(split.image_batches(24))
    assert [n for _, n in batches] == [24, 24, 16] and all(b.shape[0] == 24 for b, _ in batches)
    with pytest.raises(ValueError, match="has no split 'dev'"):
        pipeline.EvalSplit(cfg.data, "dev")


def test_unknown_dataset_is_a_clear_error():
    cfg = tiny_config(overrides=["data.name=flickr99"])
    with pytest.raises(ValueError, match="unknown dataset 'flickr99'"):
        pipeline.get_builder(cfg.data)


def test_record_index_stays_in_the_split_after_the_first_epoch(data_dir):
    """Grain's per-epoch reshuffle gives epoch * n + k past epoch 1; extras and image_index get k's record."""
    from tests.conftest import tiny_config

    cfg = tiny_config("shapes_fast.py", overrides=["train.batch_size=16"], data_dir=data_dir)
    source = pipeline.split_source(cfg.data, cfg.data.train_split)
    n = len(source)
    seen = []

    def extras(index, caption):
        seen.append(index)
        return {"record_caption": np.asarray(source[index]["captions"][caption])}

    ds = pipeline.train_dataset(cfg, pipeline.make_tokenizer(cfg.data), extras=extras)
    batches = [ds[b] for b in range(2 * n // 16 + 2)]  # more than two epochs
    assert max(seen) < n and len(set(seen)) == n
    for batch in batches:
        for row in range(16):
            assert 0 <= batch["image_index"][row] < n
            caps = [c for c in source[int(batch["image_index"][row])]["captions"]]
            assert batch["record_caption"][row] in caps


def test_readers_that_need_no_pixels_do_not_decode_images(data_dir):
    cfg = tiny_config("shapes_fast.py", data_dir=data_dir)
    decoded = pipeline.split_source(cfg.data, "test")
    raw = pipeline.split_source(cfg.data, "test", decode_images=False)
    assert isinstance(raw[3]["image"], bytes) and isinstance(decoded[3]["image"], np.ndarray)
    np.testing.assert_array_equal(pipeline._decode_image(raw[3]["image"]), decoded[3]["image"])
    assert list(raw[3]["captions"]) == list(decoded[3]["captions"])
    # EvalSplit reads its captions from the raw source; its images are the decoded ones
    split = pipeline.EvalSplit(cfg.data, "test")
    assert split.captions[:10] == [c.decode() for i in range(2) for c in decoded[i]["captions"]]
    np.testing.assert_array_equal(split.read(5), pipeline._decode_image(decoded[5]["image"], *split.image_options))

    # training with a locked image tower's features: the image is neither decoded by TFDS nor by the transform
    class Extras:
        replaces_image = True

        def __call__(self, index, caption):
            return {"image_features": np.full(3, index, np.float32)}

    batch = pipeline.train_dataset(cfg, pipeline.make_tokenizer(cfg.data), extras=Extras())[0]
    assert "image" not in batch
    np.testing.assert_array_equal(batch["image_features"][:, 0], batch["image_index"])


def test_an_eval_split_seen_at_another_resolution_keeps_its_captions():
    cfg = tiny_config()
    split = pipeline.EvalSplit(cfg.data, "test", limit=8, queries_per_image=2)
    assert split.with_image_options(cfg.data) is split
    other = cfg.data.copy_and_resolve_references()
    other.image_size, other.image_crop, other.image_resample = 32, 1.0, "bicubic"
    view = split.with_image_options(other)
    assert view.captions == split.captions and view.num_images == 8
    np.testing.assert_array_equal(view.caption_to_image, split.caption_to_image)
    # each image: the stored one resized whole with PIL's bicubic filter (an independent reference)
    from PIL import Image
    source = pipeline.split_source(cfg.data, "test")
    for i in (0, 7):
        stored = pipeline._decode_image(source[i]["image"])
        ref = np.asarray(Image.fromarray(stored).resize((32, 32), Image.BICUBIC))
        np.testing.assert_array_equal(view.read(i), ref)
        assert split.read(i).shape == (64, 64, 3)
