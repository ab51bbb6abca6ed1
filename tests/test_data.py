import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from attnguard import DataError, UnknownNameError
from attnguard.data import (BatchLoader, Split, check_dataset_name, generate_boxes, load_dataset, split_holdout)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist-5k")


def test_mnist5k_split(mnist5k):
    d = mnist5k
    assert d.train.images.shape == (4000, 1, 28, 28) and d.test.images.shape == (1000, 1, 28, 28)
    assert d.train.images.dtype == torch.uint8 and d.train.labels.dtype == torch.int64
    assert torch.bincount(d.test.labels).tolist() == [100] * 10
    assert torch.bincount(d.train.labels).tolist() == [400] * 10
    assert len(set(d.test.labels[:50].tolist())) == 10  # shuffled: the first examples cover every class
    assert d.info.num_classes == 10 and d.info.input_size == (1, 28, 28) and d.info.augment == "none"
    again = load_dataset("mnist-5k")
    assert torch.equal(again.test.images, d.test.images) and torch.equal(again.train.labels, d.train.labels)
    # no example in both splits: images are unique enough that this is a fair disjointness check
    train_keys = {bytes(x.numpy()) for x in d.train.images[:4000]}
    assert not any(bytes(x.numpy()) in train_keys for x in d.test.images)


def test_synthetic_boxes_are_tight_and_deterministic():
    a = generate_boxes(64, 32, seed=3)
    b = generate_boxes(64, 32, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes)
    for i in range(64):
        ys, xs = torch.nonzero(a.masks[i], as_tuple=True)
        x0, y0, x1, y1 = a.boxes[i].tolist()
        assert (x0, y0, x1, y1) == (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1)
    d = load_dataset("synthetic-boxes")
    counts = torch.bincount(d.train.labels)
    assert counts.min() > 0.5 * counts.float().mean()
    assert d.train.boxes is not None and d.test.masks is not None


def _png_bytes(value, size=8, mode="RGB"):
    from PIL import Image

    arr = np.full((size, size, 3 if mode == "RGB" else 1), value, dtype=np.uint8).squeeze()
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("struct", [True, False])
@pytest.mark.parametrize("with_names", [True, False])
def test_parquet_loader(tmp_path, struct, with_names):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split, n in (("train", 6), ("test", 3)):
        blobs = [_png_bytes(10 * i) for i in range(n)]
        col = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(blobs)]) if struct else pa.array(blobs, pa.binary())
        table = pa.table({"image": col, "label": pa.array([i % 3 for i in range(n)], pa.int64())})
        if with_names:
            meta = {"info": {"features": {"image": {"_type": "Image"},
                                          "label": {"names": ["a", "b", "c"], "_type": "ClassLabel"}}}}
            table = table.replace_schema_metadata({"huggingface": json.dumps(meta)})
        pq.write_table(table, tmp_path / f"{split}-00000-of-00001.parquet")
    d = load_dataset(f"parquet:{tmp_path}")
    assert d.train.images.shape == (6, 3, 8, 8) and d.test.images.shape == (3, 3, 8, 8)
    assert d.train.images[2].unique().tolist() == [20]
    assert d.info.class_names == (["a", "b", "c"] if with_names else ["0", "1", "2"])
    assert d.info.augment == "crop-flip"


def test_imagefolder_loader(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c, value in (("cat", 50), ("dog", 200)):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((10, 10, 3), value, np.uint8)).save(tmp_path / split / c / f"{i}.png")
    d = load_dataset(f"imagefolder:{tmp_path}")
    assert d.info.class_names == ["cat", "dog"] and d.train.images.shape == (4, 3, 10, 10)
    assert d.test.labels.tolist() == [0, 0, 1, 1]
    assert int(d.train.images[3].float().mean()) == 200


def test_imagefolder_without_val_is_one_line_error(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="val/") as e:
        load_dataset(f"imagefolder:{tmp_path}")
    assert "\n" not in str(e.value)


def test_missing_dataset_names_path_and_flag(tmp_path):
    for name in ("cifar10", "mnist"):
        with pytest.raises(DataError) as e:
            load_dataset(name, root=str(tmp_path))
        msg = str(e.value)
        assert str(tmp_path) in msg and "--download" in msg and "\n" not in msg


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as e:
        check_dataset_name("cifar-10")
    assert "cifar10" in str(e.value) and "parquet:<dir>" in str(e.value)
    check_dataset_name("parquet:/some/where")


def _split(n=103):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    return Split(images, torch.arange(n) % 10)


def _ids(batch_x):
    # each image is constant (its index); crops bring in zero padding, so take the maximum
    return (batch_x.flatten(1).amax(1) * 255).round().long().tolist()


def test_loader_covers_every_example_once():
    loader = BatchLoader(_split(), 10, shuffle=True, seed=1)
    assert len(loader) == 11
    seen = [i for x, _ in loader for i in _ids(x)]
    assert sorted(seen) == list(range(103))
    assert len(BatchLoader(_split(), 10, drop_last=True)) == 10


def test_loader_order_depends_on_seed_and_epoch_only():
    a, b = BatchLoader(_split(), 10, shuffle=True, seed=1), BatchLoader(_split(), 10, shuffle=True, seed=1)
    first = [_ids(x) for x, _ in a]
    assert first == [_ids(x) for x, _ in b]
    a.set_epoch(1)
    assert [_ids(x) for x, _ in a] != first


def test_resume_in_the_middle_of_an_epoch_is_bitwise_identical():
    s = _split()
    full = BatchLoader(s, 16, shuffle=True, augment="crop-flip", seed=5)
    full.set_epoch(3)
    batches = list(full)
    resumed = BatchLoader(s, 16, shuffle=True, augment="crop-flip", seed=5)
    resumed.set_epoch(3)
    rest = list(resumed.iter_from(4))
    assert len(rest) == len(batches) - 4
    for (x1, y1), (x2, y2) in zip(batches[4:], rest):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_augmentation_keeps_range_and_changes_images():
    d = generate_boxes(32, 32, seed=0)
    plain = next(iter(BatchLoader(d, 32)))[0]
    aug = next(iter(BatchLoader(d, 32, augment="crop-flip", seed=2)))[0]
    assert aug.shape == plain.shape and aug.min() >= 0 and aug.max() <= 1
    changed = (aug != plain).flatten(1).any(1).float().mean()
    assert changed > 0.5


def test_crop_and_flip_by_hand():
    from attnguard.data import augment_batch

    x = torch.arange(16.0).view(1, 1, 4, 4)
    # offset (dx, dy) = (4, 4) with pad 4 is the identity crop; flip mirrors columns
    same = augment_batch(x, torch.tensor([4]), torch.tensor([4]), torch.tensor([False]), crop=True)
    assert torch.equal(same, x)
    shifted = augment_batch(x, torch.tensor([5]), torch.tensor([4]), None, crop=True)
    assert shifted[0, 0, 0].tolist() == [1.0, 2.0, 3.0, 0.0]  # moved left by one, zero padding enters
    flipped = augment_batch(x, torch.tensor([4]), torch.tensor([4]), torch.tensor([True]), crop=False)
    assert flipped[0, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0]


def test_ddp_shards_are_disjoint_and_union_to_single_process_batches():
    s = _split(100)
    single = BatchLoader(s, 20, shuffle=True, augment="crop-flip", seed=9)
    ranks = [BatchLoader(s, 10, shuffle=True, augment="crop-flip", seed=9, rank=r, world_size=2) for r in range(2)]
    for b, (x, _) in enumerate(single):
        parts = [list(rk.iter_from(b))[0][0] for rk in ranks]
        ids = [_ids(p) for p in parts]
        assert not set(ids[0]) & set(ids[1])
        assert sorted(ids[0] + ids[1]) == sorted(_ids(x))
        # the same example gets the same augmentation on a rank as in the single process
        merged = {i: p[k] for p, ip in zip(parts, ids) for k, i in enumerate(ip)}
        for k, i in enumerate(_ids(x)):
            assert torch.equal(merged[i], x[k])


def test_split_holdout_is_fixed():
    s = _split(50)
    tr, va = split_holdout(s, 10, seed=0)
    tr2, va2 = split_holdout(s, 10, seed=0)
    assert len(va) == 10 and len(tr) == 40 and torch.equal(va.images, va2.images)
    assert not set(va.labels.tolist()) - set(range(10))


@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason="shared Fashion-MNIST files absent")
def test_real_fashion_mnist_idx_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (SHARED / "fashion-mnist").iterdir():
        os.symlink(f, raw / f.name)
    d = load_dataset("fashion-mnist", root=str(tmp_path))
    assert d.train.images.shape == (60000, 1, 28, 28) and d.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.test.labels).tolist() == [1000] * 10


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10-jpeg").is_dir(), reason="shared CIFAR-10 JPEG parquet absent")
def test_real_cifar10_jpeg_parquet():
    d = load_dataset(f"parquet:{SHARED / 'cifar10-jpeg'}")
    assert d.train.images.shape == (50000, 3, 32, 32) and d.test.images.shape == (10000, 3, 32, 32)
    assert d.info.class_names[0] == "airplane" and d.info.class_names[-1] == "truck"
