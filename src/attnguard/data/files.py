"""Datasets given as files: ``imagefolder:<dir>`` and ``parquet:<dir>`` (Hugging Face style)."""

from __future__ import annotations

import io
import json
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
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _stack(arrays: List[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_imagefolder(directory: str, size: Optional[int] = None) -> Tuple[Split, Split, List[str]]:
    """``<dir>/train/<class>/*.jpg`` and ``<dir>/val/...`` (or ``test/``), held in memory as uint8.

    Images are resized (shorter side) and centre-cropped to ``size``: by default the size of the
    images when they are all square and equal (e.g. 32x32 sets), else 224. Everything is decoded
    up front, which suits small datasets (17 Flowers, ImageNet subsets); a full ImageNet does not
    fit in memory this way.
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
    first = [Image.open(p) for p, _ in files["train"][:64]]
    mode = "L" if all(im.mode in ("L", "1") for im in first) else "RGB"
    if size is None:
        sizes = {im.size for im in first}
        size = next(iter(sizes))[0] if len(sizes) == 1 and next(iter(sizes))[0] == next(iter(sizes))[1] else 224
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


def load_parquet(directory: str) -> Tuple[Split, Split, List[str]]:
    """Hugging Face-style image parquet: ``train-*.parquet`` and ``test-*.parquet`` in ``<dir>``.

    The image column holds ``{bytes, path}`` structs or raw encoded bytes; the label column is
    ``label`` (or ``labels``, or the first integer column). Class names come from the schema
    metadata key ``huggingface`` when it has them.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"parquet: {root} is not a directory")
    names = None
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
            col = table.column(img_col).to_pylist()
            blobs = [c["bytes"] if isinstance(c, dict) else c for c in col]
            mode = None
            for blob in blobs:
                with Image.open(io.BytesIO(blob)) as im:
                    mode = mode or ("L" if im.mode in ("L", "1") else "RGB")
                    arrays.append(_to_array(im, None, mode))
            labels.extend(int(v) for v in table.column(lab_col).to_pylist())
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise DataError(f"parquet: images in {root} differ in size ({sorted(shapes)[:3]}...)")
        out.append(Split(_stack(arrays), torch.tensor(labels, dtype=torch.int64)))
    k = int(max(out[0].labels.max(), out[1].labels.max())) + 1
    names = names if names and len(names) >= k else [str(i) for i in range(k)]
    return out[0], out[1], names
