"""Datasets given as files: ``imagefolder:<dir>`` and ``parquet:<dir>`` (Hugging Face style)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..errors import DataError
from .base import Split

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _to_array(img, size: Optional[int], mode: str) -> np.ndarray:
    """PIL image -> uint8 HWC array; shorter side resized to ``size`` and centre-cropped square."""
    from PIL import Image

    img = img.convert(mode)
    if size is not None and img.size != (size, size):
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only)
    return arr[..., None] if arr.ndim == 2 else arr


def _stack(arrays: List[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_imagefolder(directory: str, size: Optional[int] = None,
                     max_gib: float = 8.0) -> Tuple[Split, Split, List[str]]:
    """``<dir>/train/<class>/*.jpg`` and ``<dir>/val/...`` (or ``test/``), held in memory as uint8.

    Images are resized (shorter side) and centre-cropped to ``size``: by default the size of the
    images when they are all square and equal (e.g. 32x32 sets), else 224. Everything is decoded
    up front, which suits small datasets (17 Flowers: 1,360 images, 0.2 GiB at 224x224; ImageNet
    subsets of a few tens of thousands of images); a folder that would need more than ``max_gib``
    GiB (about 57,000 RGB images at 224x224 for 8 GiB) is refused with a DataError, since the
    whole split is also copied to the GPU by :class:`BatchLoader`.
    """
    from PIL import Image

    root = Path(directory)
    train_dir = root / "train"
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"imagefolder: {root} needs train/ and val/ (or test/) subfolders of class folders")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"imagefolder: {train_dir} has no class folders")
    files = {}
    for split, d in (("train", train_dir), ("test", test_dir)):
        extra = sorted(c.name for c in d.iterdir() if c.is_dir() and c.name not in classes)
        if extra:
            raise DataError(f"imagefolder: {d} has classes missing from train/: {', '.join(extra)}")
        files[split] = [(p, i) for i, c in enumerate(classes) for p in sorted((d / c).iterdir())
                        if p.suffix.lower() in IMAGE_EXTS]
        if not files[split]:
            raise DataError(f"imagefolder: no images under {d}")
    modes, sizes = set(), set()
    for p, _ in files["train"] + files["test"]:  # headers only: cheap even for thousands of files
        try:
            with Image.open(p) as im:
                modes.add(im.mode)
                sizes.add(im.size)
        except Exception as e:
            raise DataError(f"imagefolder: cannot read {p}: {type(e).__name__}") from None
    mode = "L" if modes <= {"L", "1"} else "RGB"
    if size is None:
        w, h = next(iter(sizes))
        size = w if len(sizes) == 1 and w == h else 224
    need = (len(files["train"]) + len(files["test"])) * (1 if mode == "L" else 3) * size * size / 2 ** 30
    if need > max_gib:
        raise DataError(f"imagefolder: {root} would take {need:.1f} GiB in memory at {size}x{size} "
                        f"(limit {max_gib:g} GiB); use a smaller image size or a subset")
    out = []
    for split in ("train", "test"):
        arrays, labels = [], []
        for p, label in files[split]:
            try:
                with Image.open(p) as im:
                    arrays.append(_to_array(im, size, mode))
            except Exception as e:
                raise DataError(f"imagefolder: cannot read {p}: {type(e).__name__}") from None
            labels.append(label)
        out.append(Split(_stack(arrays), torch.tensor(labels, dtype=torch.int64)))
    return out[0], out[1], classes


def _parquet_files(root: Path, split: str) -> List[Path]:
    pats = [f"{split}-*.parquet", f"{split}.parquet", f"{split}/*.parquet", f"data/{split}-*.parquet"]
    if split == "test":
        pats += ["validation-*.parquet", "val-*.parquet", "validation/*.parquet"]
    for pat in pats:
        found = sorted(root.glob(pat))
        if found:
            return found
    return []


def _class_names(schema) -> Optional[List[str]]:
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return None
    try:
        feats = json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return None
    for feat in feats.values():
        if isinstance(feat, dict) and "names" in feat:
            return [str(n) for n in feat["names"]]
    return None


def _decode_blobs(blobs: List[bytes], mode: str, where: Path) -> List[torch.Tensor]:
    """Encoded images -> uint8 CHW tensors in ``mode`` ("RGB" or "L").

    JPEGs (most Hugging Face image sets) are decoded in one batched call of
    ``torchvision.io.decode_jpeg`` (about 3x faster than PIL image by image here, and equal to
    PIL's output bit for bit on cifar10-jpeg: both use libjpeg-turbo); anything else, a JPEG
    torchvision rejects, or a torchvision without ``decode_jpeg`` (deprecated since 0.29) goes
    through PIL.
    """
    from PIL import Image

    out: List[Optional[torch.Tensor]] = [None] * len(blobs)
    jpeg = [i for i, b in enumerate(blobs) if b[:2] == b"\xff\xd8"]
    if jpeg:
        try:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs
                warnings.simplefilter("ignore", DeprecationWarning)
                import torchvision.io as tvio

                read_mode = tvio.ImageReadMode.RGB if mode == "RGB" else tvio.ImageReadMode.GRAY
                data = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpeg]
                decoded = tvio.decode_jpeg(data, mode=read_mode)
            for i, img in zip(jpeg, decoded):
                out[i] = img
        except Exception:  # an odd JPEG (CMYK, progressive corner cases): PIL below
            pass
    for i, blob in enumerate(blobs):
        if out[i] is None:
            try:
                with Image.open(io.BytesIO(blob)) as im:
                    out[i] = torch.from_numpy(_to_array(im, None, mode)).permute(2, 0, 1)
            except Exception as e:
                raise DataError(f"parquet: cannot decode image {i} of {where}: {type(e).__name__}") from None
    return out  # type: ignore[return-value]


def _image_mode(blob: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        return "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"


def load_parquet(directory: str) -> Tuple[Split, Split, List[str]]:
    """Hugging Face-style image parquet: ``train-*.parquet`` and ``test-*.parquet`` in ``<dir>``.

    The image column holds ``{bytes, path}`` structs or raw encoded bytes; the label column is
    ``label`` (or ``labels``, or the first integer column). Class names come from the schema
    metadata key ``huggingface`` (``info.features.<label>.names``) when it has them. The colour
    mode (grey or RGB) is that of the first train image; every image must have the same size.
    Everything is decoded into memory (CIFAR-10 JPEG: 60k images, ~180 MB, ~6 s on one core).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"parquet: {root} is not a directory")
    names, mode = None, None
    out = []
    for split in ("train", "test"):
        paths = _parquet_files(root, split)
        if not paths:
            raise DataError(f"parquet: no {split}-*.parquet files in {root}")
        arrays, labels = [], []
        for path in paths:
            try:
                table = pq.read_table(path)
            except Exception as e:
                raise DataError(f"parquet: cannot read {path}: {str(e).splitlines()[0][:160]}") from None
            names = names or _class_names(table.schema)
            img_col = next((f.name for f in table.schema if pa.types.is_struct(f.type)
                            and "bytes" in [c.name for c in f.type]), None)
            img_col = img_col or next((f.name for f in table.schema if pa.types.is_binary(f.type)
                                       or pa.types.is_large_binary(f.type)), None)
            lab_col = next((c for c in ("label", "labels") if c in table.column_names), None)
            lab_col = lab_col or next((f.name for f in table.schema if pa.types.is_integer(f.type)), None)
            if img_col is None or lab_col is None:
                raise DataError(f"parquet: {path} needs an image column ({{bytes, path}} or bytes) and a label column")
            col = table.column(img_col).combine_chunks()
            blobs = (col.field("bytes") if pa.types.is_struct(col.type) else col).to_pylist()
            if any(b is None for b in blobs):
                raise DataError(f"parquet: {path} has rows without image bytes")
            if not blobs:
                continue
            mode = mode or _image_mode(blobs[0])
            arrays.extend(_decode_blobs(blobs, mode, path))
            labels.extend(int(v) for v in table.column(lab_col).to_pylist())
        if not arrays:
            raise DataError(f"parquet: the {split} files in {root} hold no rows")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise DataError(f"parquet: images in {root} differ in size ({sorted(shapes)[:3]}...)")
        out.append(Split(torch.stack(arrays), torch.tensor(labels, dtype=torch.int64)))
    if out[0].images.shape[1:] != out[1].images.shape[1:]:
        raise DataError(f"parquet: train and test images in {root} differ in shape "
                        f"({tuple(out[0].images.shape[1:])} vs {tuple(out[1].images.shape[1:])})")
    k = int(max(out[0].labels.max(), out[1].labels.max())) + 1
    names = names if names and len(names) >= k else [str(i) for i in range(k)]
    return out[0], out[1], names
