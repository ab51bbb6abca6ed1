"""Attention analyses (AAD Tables 1-5, AT+ALP Table 3): hand-computed IoUs, box parsing, LIME, run level."""

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F
import yaml

import attnguard
from attnguard.analysis import (analyze, analyze_model, attention_statistics, box_iou, box_tables, boxes_to_mask,
                                cell_iou, equal_area_mask, lime_maps, load_boxes, mean_activation_in, to_grid)
from attnguard.attacks import FGSM
from attnguard.errors import DataError
from attnguard.io import atomic_torch_save
from _support import load_mnist


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    pass


MNIST = {}


@pytest.fixture(scope="module", autouse=True)
def _mnist(request):
    MNIST["data"] = load_mnist(getattr(request.config, "cache", None))


def mnist(n, offset=0):
    x, y = MNIST["data"]
    return x[offset:offset + n], y[offset:offset + n]


def digit_boxes(x):
    """Tight pixel-edge boxes of the digit strokes (a stand-in for object boxes)."""
    out = []
    for img in x[:, 0]:
        nz = (img > 0.3).nonzero()
        out.append([nz[:, 1].min(), nz[:, 0].min(), nz[:, 1].max() + 1, nz[:, 0].max() + 1])
    return torch.tensor(out, dtype=torch.float32)


@pytest.fixture(scope="module")
def trained(_mnist):
    torch.manual_seed(0)
    x, y = mnist(1000)
    model = attnguard.create_model("lenet", width=0.25)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(2):
        for i in range(0, len(x), 50):
            loss = F.cross_entropy(model(x[i:i + 50]), y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def fake_data_module(x, y, with_boxes=True):
    """A stand-in ``attnguard.data`` whose ``load_dataset`` serves these MNIST test images."""
    test = types.SimpleNamespace(images=(x * 255).round().to(torch.uint8), labels=y,
                                 boxes=digit_boxes(x) if with_boxes else None,
                                 masks=(x[:, 0] > 0.3).to(torch.uint8) if with_boxes else None)
    info = types.SimpleNamespace(num_classes=10, input_size=(1, 28, 28), class_names=[str(i) for i in range(10)],
                                 mean=(0.0,), std=(1.0,))
    mod = types.ModuleType("attnguard.data")
    mod.load_dataset = lambda name, root=None, **kw: types.SimpleNamespace(info=info, train=test, test=test)
    return mod


def make_run(path, model, cfg=None):
    cfg = cfg or {"data": {"name": "mnist", "root": None}, "model": {"name": "lenet"},
                  "defense": {"preset": "madry"}, "adversary": {"eps": 0.2}, "seed": 0}
    path.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"format": "attnguard-checkpoint", "model_config": model.config, "model": model.state_dict(),
                       "config": cfg}, path / "checkpoints" / "best.pt")
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------- AAD eq. 6 / Table 3
def test_cell_iou_three_of_five_overlap_is_three_sevenths():
    a, b = torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)
    a.view(-1)[[0, 1, 2, 3, 4]] = torch.tensor([9.0, 8, 7, 6, 5])
    b.view(-1)[[2, 3, 4, 10, 11]] = torch.tensor([9.0, 8, 7, 6, 5])
    iou = cell_iou(a, b, cells=(5,), grid=8)
    assert iou[5].item() == pytest.approx(3 / 7)
    # identical maps agree completely for every k; k beyond the 64 cells is left out
    same = cell_iou(a, a.clone(), cells=(5, 10, 100))
    assert set(same) == {5, 10} and same[5].item() == 1.0


def test_to_grid_pools_to_eight_by_eight_and_refuses_finer_grids():
    cam = torch.zeros(1, 16, 16)
    cam[0, :2, :2] = 4.0  # exactly the first 2x2 pooling window
    cam[0, 2, 2] = 8.0  # a quarter of window (1, 1)
    g = to_grid(cam, 8)
    assert g.shape == (1, 8, 8)
    assert g[0, 0, 0].item() == pytest.approx(4.0) and g[0, 1, 1].item() == pytest.approx(2.0)
    assert g.sum().item() == pytest.approx(6.0)
    assert to_grid(cam, None) is cam
    with pytest.raises(ValueError, match="finer"):
        to_grid(torch.zeros(1, 4, 4), 8)


# ---------------------------------------------------------------- AAD eq. 5 / Tables 1-2
def test_boxes_to_mask_uses_pixel_edges_and_unions_boxes():
    m = boxes_to_mask(torch.tensor([[2.0, 2.0, 5.0, 4.0]]), 6, 6)
    assert m.sum() == 6
    assert m[0, 2:4, 2:5].all() and not m[0, 4].any() and not m[0, :, 5].any()
    u = boxes_to_mask([torch.tensor([[0.0, 0, 2, 2], [1.0, 1, 3, 3]]), torch.zeros(0, 4)], 4, 4)
    assert u[0].sum() == 7 and u[1].sum() == 0


def test_equal_area_threshold_picks_exactly_box_area_pixels():
    g = torch.Generator().manual_seed(0)
    cam = torch.rand(3, 12, 12, generator=g)
    cam[2] = 0.5  # a flat map: ties everywhere, the area must still be exact
    region = boxes_to_mask(torch.tensor([[1.0, 1, 4, 5], [0.0, 0, 12, 12], [3.0, 3, 9, 4]]), 12, 12)
    mask = equal_area_mask(cam, region)
    assert mask.flatten(1).sum(1).tolist() == region.flatten(1).sum(1).tolist() == [12, 144, 6]
    # the chosen pixels are the highest ones
    assert cam[0][mask[0]].min() >= cam[0][~mask[0]].max()


def test_box_iou_hand_computed():
    cam = torch.zeros(2, 4, 4)
    cam[0, 0, :] = 1.0  # attention on the top row; box = the left column (4 pixels)
    cam[1, :2, :2] = 1.0  # attention exactly on the box
    region = boxes_to_mask(torch.tensor([[0.0, 0, 1, 4], [0.0, 0, 2, 2]]), 4, 4)
    iou = box_iou(cam, region)
    assert iou[0].item() == pytest.approx(1 / 7)  # overlap 1 pixel, union 4 + 4 - 1
    assert iou[1].item() == pytest.approx(1.0)
    # a coarse map is upsampled to the region first; an empty region is NaN
    assert box_iou(torch.ones(1, 2, 2), torch.zeros(1, 8, 8, dtype=torch.bool)).isnan().all()


def test_mean_activation_inside_region_is_the_normalized_mean():
    cam = torch.tensor([[[0.0, 2.0], [4.0, 8.0]]])  # normalized: 0, .25, .5, 1
    region = torch.tensor([[[False, True], [False, True]]])
    assert mean_activation_in(cam, region).item() == pytest.approx((0.25 + 1.0) / 2)


def test_box_tables_percentages_means_and_low_iou_split():
    iou = torch.tensor([0.2, 0.4, 0.8, 0.6, float("nan")])
    succeed = torch.tensor([True, False, True, False, True])
    conf = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.1])
    t = box_tables(iou, succeed, conf)
    assert t["n_images"] == 4
    assert t["table1"]["succeed"] == {"percentage": 0.5, "iou": pytest.approx(0.5)}
    assert t["table1"]["fail"]["iou"] == pytest.approx(0.5)
    low = t["table2"]
    assert low["n_images"] == 2 and low["succeed"]["percentage"] == 0.5
    assert low["succeed"]["confidence"] == pytest.approx(0.9) and low["fail"]["confidence"] == pytest.approx(0.7)


# ---------------------------------------------------------------- box files
VOC = """<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = "<object><name>n01</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>"


def test_voc_xml_directory_scaled_and_matched_by_order_or_name(tmp_path):
    d = tmp_path / "ann"
    d.mkdir()
    (d / "img_0002.xml").write_text(VOC.format(name="img_0002.JPEG", w=100, h=50, objects=OBJ.format(10, 5, 60, 25)))
    (d / "img_0001.xml").write_text(VOC.format(name="img_0001.JPEG", w=200, h=200,
                                               objects=OBJ.format(0, 0, 100, 100) + OBJ.format(100, 100, 200, 200)))
    boxes = load_boxes(d, n=3, input_size=(20, 40))  # sorted file order = index order
    assert boxes[0].tolist() == [[0.0, 0.0, 20.0, 10.0], [20.0, 10.0, 40.0, 20.0]]
    assert boxes[1].tolist() == [[4.0, 2.0, 24.0, 10.0]]
    assert boxes[2].shape == (0, 4)
    by_name = load_boxes(d, n=2, input_size=(20, 40), filenames=["img_0002.png", "img_0001.png"])
    assert by_name[0].tolist() == [[4.0, 2.0, 24.0, 10.0]] and len(by_name[1]) == 2
    single = load_boxes(d / "img_0002.xml", n=1, input_size=(50, 100))
    assert single[0].tolist() == [[10.0, 5.0, 60.0, 25.0]]


def test_voc_and_csv_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object><bndbox><xmin>1</xmin></bndbox></object>")
    with pytest.raises(DataError, match="not valid XML"):
        load_boxes(bad, 1, (8, 8))
    bad.write_text("<annotation><object><bndbox><xmin>1</xmin></bndbox></object></annotation>")
    with pytest.raises(DataError, match="lacks <ymin>"):
        load_boxes(bad, 1, (8, 8))
    csv = tmp_path / "b.csv"
    csv.write_text("index,xmin,ymin\n0,1,2\n")
    with pytest.raises(DataError, match="xmax, ymax"):
        load_boxes(csv, 1, (8, 8))
    csv.write_text("index,xmin,ymin,xmax,ymax\n0,1,two,3,4\n")
    with pytest.raises(DataError, match=r"b.csv:2: ymin must be a number"):
        load_boxes(csv, 1, (8, 8))
    with pytest.raises(DataError, match="no such box file"):
        load_boxes(tmp_path / "missing.csv", 1, (8, 8))


def test_csv_boxes_by_index_and_by_filename(tmp_path):
    f = tmp_path / "boxes.csv"
    f.write_text("index,xmin,ymin,xmax,ymax,width,height\n1,10,10,20,30,40,40\n1,0,0,4,4,,\n0,1,2,3,4,,\n7,0,0,1,1,,\n")
    boxes = load_boxes(f, n=3, input_size=(20, 20))
    assert boxes[0].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert boxes[1].tolist() == [[5.0, 5.0, 10.0, 15.0], [0.0, 0.0, 4.0, 4.0]]  # scaled from 40x40; unscaled
    assert boxes[2].shape == (0, 4)  # index 7 is beyond n
    g = tmp_path / "named.csv"
    g.write_text("filename,xmin,ymin,xmax,ymax\nb.png,1,1,2,2\na.png,3,3,4,4\n")
    assert load_boxes(g, 2, (8, 8))[0].tolist() == [[1.0, 1.0, 2.0, 2.0]]  # order of appearance
    assert load_boxes(g, 2, (8, 8), filenames=["a.jpg", "b.jpg"])[0].tolist() == [[3.0, 3.0, 4.0, 4.0]]
    with pytest.raises(DataError, match="none of the boxes"):
        load_boxes(g, 2, (8, 8), filenames=["c.jpg", "d.jpg"])


# ---------------------------------------------------------------- LIME (AAD Tables 4-5)
def test_lime_masks_hold_the_requested_number_of_features(trained):
    x, y = mnist(2, offset=4000)
    maps = lime_maps(trained, x, y, num_features=(3, 8), num_samples=120, seed=0)
    for k in (3, 8):
        assert maps.masks[k].shape == (2, 28, 28) and maps.masks[k].dtype == torch.bool
        for i in range(2):
            assert len(maps.features[k][i]) == k
            assert len(maps.segments[i][maps.masks[k][i]].unique()) == k
    assert all(n >= 10 for n in maps.n_segments)
    assert (maps.masks[3] <= maps.masks[8]).all()  # top-3 segments are among the top-8
    again = lime_maps(trained, x, y, num_features=(3,), num_samples=120, seed=0)
    assert torch.equal(again.masks[3], maps.masks[3])


# ---------------------------------------------------------------- whole analyses
def test_attention_statistics_on_a_trained_model(trained, tmp_path):
    x, y = mnist(80, offset=4000)
    res = analyze_model(trained, x, y, FGSM(0.2), boxes=digit_boxes(x), masks=x[:, 0] > 0.3, out_dir=tmp_path,
                        lime_examples=2, lime_samples=100)
    assert res["n_correct"] == res["n_succeed"] + res["n_fail"] > 40
    assert [r["cells"] for r in res["clean_vs_adv"]["rows"]] == [5, 10, 20, 30]
    assert res["clean_vs_adv"]["model_grid"] == [14, 14]
    for r in res["clean_vs_adv"]["rows"]:
        assert 0 <= r["succeed"] <= 1 and 0 <= r["fail"] <= 1
    t1 = res["attention_vs_box"]["table1"]
    assert t1["succeed"]["percentage"] + t1["fail"]["percentage"] == pytest.approx(1.0)
    assert set(res["activation_in_region"]) == {"box", "mask"}
    assert {r["features"] for r in res["lime"]["table5"]} == {8, 10} and "table4" in res["lime"]
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["n_correct"] == res["n_correct"] and saved["plots"]
    for name in saved["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_coarse_model_grid_falls_back_to_the_model_grid():
    model = attnguard.create_model("resnet9", width=0.125).eval()  # 4x4 attention grid at 32x32
    x, y = torch.rand(6, 3, 32, 32), torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image "correct"
    res, _ = attention_statistics(model, x, y, FGSM(8 / 255), lime_examples=0)
    assert res["clean_vs_adv"]["grid"] == "model" and [r["cells"] for r in res["clean_vs_adv"]["rows"]] == [5, 10]
    assert res["clean_vs_adv"]["skipped_cells"] == [20, 30] and "coarser" in res["notes"][0]


def test_analyze_run_directory(trained, tmp_path, monkeypatch):
    x, y = mnist(40, offset=4000)
    monkeypatch.setitem(sys.modules, "attnguard.data", fake_data_module(x, y))
    run = make_run(tmp_path / "run", trained)
    res = analyze(run, n_examples=30, lime_examples=0)
    assert res["n_examples"] == 30 and res["boxes"] == "dataset" and res["eps"] == 0.2
    assert res["attack"] == "stepll" and "attention_vs_box" in res
    assert json.loads((run / "analysis" / "analysis.json").read_text())["n_correct"] == res["n_correct"]
    # explicit boxes from a CSV replace the dataset's; no boxes at all skips the box tables with a note
    csv = tmp_path / "b.csv"
    csv.write_text("index,xmin,ymin,xmax,ymax\n" + "".join(f"{i},4,4,24,24\n" for i in range(30)))
    res = analyze(run, boxes=csv, n_examples=30, out_dir=tmp_path / "a2", lime_examples=0, attack="fgsm")
    assert res["boxes"] == str(csv) and res["attack_used"] == "fgsm"
    monkeypatch.setitem(sys.modules, "attnguard.data", fake_data_module(x, y, with_boxes=False))
    res = analyze(run, n_examples=30, out_dir=tmp_path / "a3", lime_examples=0)
    assert "attention_vs_box" not in res and any("skipped" in n for n in res["notes"])


def test_analyze_on_the_generated_synthetic_boxes_dataset(tmp_path):
    from attnguard import data

    info = data.load_dataset("synthetic-boxes").info
    model = attnguard.create_model("lenet", input_size=info.input_size, num_classes=info.num_classes, width=0.25)
    cfg = {"data": {"name": "synthetic-boxes"}, "model": {"name": "lenet"}, "adversary": {"eps": 8 / 255}, "seed": 0}
    run = make_run(tmp_path / "syn", model.eval(), cfg)
    res = analyze(run, n_examples=60, lime_examples=1, lime_samples=60)
    assert res["dataset"] == "synthetic-boxes" and res["boxes"] == "dataset" and res["masks"] == "dataset"
    if res["n_correct"]:
        assert "attention_vs_box" in res and set(res["activation_in_region"]) == {"box", "mask"}


def test_flat_maps_are_left_out_of_the_clean_vs_adv_iou():
    """A zero map's top cells are a positional tie: two zero maps would score IoU 1. Pairs with a flat map
    on either side leave the table's rows (counted, and kept apart in rows_with_flat_maps)."""
    from attnguard.analysis.attention_stats import clean_vs_adv_table

    peak = lambda r, c: torch.zeros(4, 4).index_put_((torch.tensor([r]), torch.tensor([c])), torch.tensor(1.0))  # noqa: E731
    clean = torch.stack([peak(0, 0), peak(0, 0), torch.zeros(4, 4), torch.zeros(4, 4)])
    adv = torch.stack([peak(0, 0), peak(3, 3), torch.zeros(4, 4), peak(2, 2)])
    succeed = torch.tensor([False, True, False, True])
    table, per_k, note = clean_vs_adv_table(clean, adv, succeed, cells=(1,), grid=None)
    # pairs 2 and 3: a zero map's top cell is whatever torch.topk returns for a tie (here, two zero maps
    # "agree" and a zero map may "match" a peak): implementation-defined, so only the informative pairs are asserted
    assert per_k[1].tolist()[:2] == [1.0, 0.0] and per_k[1][2] == 1.0
    assert table["rows"] == [{"cells": 1, "succeed": 0.0, "fail": 1.0}]  # pairs 0 and 1 only
    assert table["rows_with_flat_maps"][0]["fail"] == 1.0  # pairs 0 and 2 (two zero maps tie the same way)
    assert table["flat_maps"] == {"clean": 2, "adversarial": 1, "pairs_left_out": 2, "succeed_left_out": 1,
                                  "fail_left_out": 1}
    assert note.startswith("2 of 4 clean/adversarial pairs have a flat attention map")
    # with a flat fail pair that would lift the mean: every-pair fail mean 1.0 (pairs 0, 2), kept-pair mean 1.0;
    # make pair 0 disagree to see the difference
    adv[0] = peak(1, 1)
    table, _, _ = clean_vs_adv_table(clean, adv, succeed, cells=(1,), grid=None)
    assert table["rows"][0]["fail"] == 0.0 and table["rows_with_flat_maps"][0]["fail"] == 0.5
    table, _, note = clean_vs_adv_table(clean[:2], adv[:2], succeed[:2], cells=(1,), grid=None)
    assert note is None and "flat_maps" not in table and "rows_with_flat_maps" not in table
