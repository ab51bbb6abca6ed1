"""Ground-truth boxes for the attention analyses: Pascal VOC XML (ImageNet validation format) or CSV.

Boxes come back in the model's input pixel coordinates (x0, y0, x1, y1), one ``[m, 4]`` float
tensor per test image, in test-set order. Coordinates are scaled from the annotated image size
(``<size>`` in VOC, optional ``width``/``height`` columns in CSV) to the input size, which
assumes the images were resized to the input size without cropping.

Matching annotations to images: by file name when the dataset knows its file names; otherwise
by order (VOC files sorted by name, which is index order for ImageNet's
``ILSVRC2012_val_00000001.xml`` ...; CSV file names in order of first appearance). A CSV with an
``index`` column gives the index directly.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import DataError

Size = Tuple[int, int]  # (height, width)


def _stem(name: str) -> str:
    return Path(str(name).strip()).stem


def _num(text, what: str, where: str) -> float:
    try:
        return float(str(text).strip())
    except (TypeError, ValueError):
        raise DataError(f"{where}: {what} must be a number, got {text!r}") from None


def _scaled(box, size_wh, input_hw: Size) -> List[float]:
    x0, y0, x1, y1 = box
    if size_wh is None:
        return [x0, y0, x1, y1]
    sx, sy = input_hw[1] / size_wh[0], input_hw[0] / size_wh[1]
    return [x0 * sx, y0 * sy, x1 * sx, y1 * sy]


def _voc_annotation(node: ET.Element, where: str, input_hw: Size) -> Tuple[str, List[List[float]]]:
    fname = (node.findtext("filename") or "").strip()
    size = node.find("size")
    size_wh = None
    if size is not None and size.findtext("width") and size.findtext("height"):
        w, h = _num(size.findtext("width"), "width", where), _num(size.findtext("height"), "height", where)
        if w > 0 and h > 0:
            size_wh = (w, h)
    boxes = []
    for obj in node.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        vals = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            if bb.findtext(key) is None:
                raise DataError(f"{where}: <bndbox> lacks <{key}>")
            vals.append(_num(bb.findtext(key), key, where))
        boxes.append(_scaled(vals, size_wh, input_hw))
    return fname, boxes


def read_voc(path, input_size: Size) -> List[Tuple[str, List[List[float]]]]:
    """``[(file name, boxes)]`` from one VOC XML file or a directory of them (sorted by name)."""
    path = Path(path)
    files = sorted(path.glob("*.xml")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no .xml annotation files in {path}")
    out = []
    for f in files:
        try:
            root = ET.parse(f).getroot()
        except ET.ParseError as e:
            raise DataError(f"{f} is not valid XML: {e}") from None
        nodes = [root] if root.tag == "annotation" else list(root.iter("annotation"))
        if not nodes:
            raise DataError(f"{f} holds no <annotation> element (expected Pascal VOC format)")
        for node in nodes:
            fname, boxes = _voc_annotation(node, str(f), input_size)
            out.append((fname or f.stem, boxes))
    return out


def read_csv(path, input_size: Size) -> List[Tuple[object, List[float]]]:
    """``[(index or file name, box)]`` rows from a CSV with xmin, ymin, xmax, ymax columns."""
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        missing = [c for c in ("xmin", "ymin", "xmax", "ymax") if c not in cols]
        if missing:
            raise DataError(f"{path}: box CSV lacks column(s) {', '.join(missing)}; expected index or filename, "
                            "xmin, ymin, xmax, ymax and optionally width, height")
        key = "index" if "index" in cols else "filename" if "filename" in cols else None
        if key is None:
            raise DataError(f"{path}: box CSV needs an 'index' or a 'filename' column")
        rows = []
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            box = [_num(row[cols[c]], c, where) for c in ("xmin", "ymin", "xmax", "ymax")]
            size_wh = None
            if "width" in cols and "height" in cols and row[cols["width"]] and row[cols["height"]]:
                size_wh = (_num(row[cols["width"]], "width", where), _num(row[cols["height"]], "height", where))
            ident = row[cols[key]]
            if key == "index":
                idx = _num(ident, "index", where)
                if idx != int(idx) or idx < 0:
                    raise DataError(f"{where}: index must be a whole number >= 0, got {ident!r}")
                ident = int(idx)
            rows.append((ident, _scaled(box, size_wh, input_size)))
    return rows


def _index_of(idents: Sequence, filenames: Optional[Sequence[str]]) -> Dict[object, int]:
    if filenames is not None:
        lookup = {_stem(f): i for i, f in enumerate(filenames)}
        return {ident: lookup[_stem(ident)] for ident in idents if _stem(ident) in lookup}
    order: Dict[object, int] = {}
    for ident in idents:
        order.setdefault(ident, len(order))
    return order


def load_boxes(source, n: int, input_size: Size, filenames: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
    """Boxes for the first ``n`` test images from a VOC XML file/directory or a CSV file.

    Args:
        source: a ``.csv`` file, a VOC ``.xml`` file, or a directory of ``.xml`` files.
        n: number of test images; annotations for later images are ignored.
        input_size: the model's input (height, width); boxes are scaled to it.
        filenames: the dataset's file names, to match annotations by name (else by order).

    Returns a list of ``n`` ``[m, 4]`` tensors (``m = 0`` for images without a box).
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"no such box file or directory: {source}")
    if source.suffix.lower() == ".csv":
        rows = read_csv(source, input_size)
        str_idents = [i for i, _ in rows if not isinstance(i, int)]
        mapping = _index_of(str_idents, filenames)
        pairs = [(i if isinstance(i, int) else mapping.get(i), box) for i, box in rows]
    elif source.is_dir() or source.suffix.lower() == ".xml":
        anns = read_voc(source, input_size)
        mapping = _index_of([f for f, _ in anns], filenames)
        pairs = [(mapping.get(f), box) for f, boxes in anns for box in boxes]
    else:
        raise DataError(f"boxes must be a .csv file, a VOC .xml file or a directory of .xml files, got {source}")
    per_image: List[List[List[float]]] = [[] for _ in range(n)]
    matched = 0
    for idx, box in pairs:
        if idx is not None and 0 <= idx < n:
            per_image[idx].append(box)
            matched += 1
    if pairs and matched == 0 and n > 0:
        raise DataError(f"none of the boxes in {source} matches one of the first {n} test images "
                        "(check the file names or indices)")
    return [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in per_image]
