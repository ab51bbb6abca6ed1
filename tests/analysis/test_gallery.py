"""Clean/adversarial Grad-CAM galleries (AAD Fig. 1, 7): PNG rows, grayscale and RGB, run directories."""

import sys
import types

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import attnguard
from attnguard.analysis import explain, gallery_figure, save_gallery
from attnguard.analysis import gallery as G
from attnguard.attacks import PGD
from attnguard.errors import ConfigError
from attnguard.io import atomic_torch_save
from _support import PNG


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    pass


def expected_height(rows, title=False):
    header = 0.75 + (0.3 if title else 0.0)
    return round(G.DPI * (header + rows * G.ROW_H + G.FOOTER_H))


def check_png(path, rows, title=False):
    assert path.read_bytes()[:8] == PNG
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.info["Description"] == f"rows={rows}"
        w, h = im.size
        assert abs(h - expected_height(rows, title)) <= 2 and abs(w - G.DPI * (4 * G.PANEL_W + 0.3)) <= 2
        px = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32))
        assert px.std() > 20  # images, overlays and text: far from a blank page


@pytest.mark.parametrize("channels,size,rows", [(1, 28, 3), (3, 32, 2)])
def test_gallery_png_has_one_row_per_image(tmp_path, channels, size, rows):
    model = attnguard.create_model("lenet", input_size=(channels, size, size), width=0.25).eval()
    x = torch.rand(rows, channels, size, size)
    y = torch.arange(rows)
    out = save_gallery(model, x, y, PGD(0.1, steps=2, seed=0), [f"class {i}" for i in range(10)],
                       tmp_path / "sub" / "g.png", attack_label="PGD-2, ε=0.1")
    check_png(out, rows)


def test_gallery_info_matches_the_model_and_restores_train_mode():
    model = attnguard.create_model("small-cnn", width=0.25)
    model.train()
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 4])
    fig, info = gallery_figure(model, x, y, PGD(0.1, steps=2, seed=0))
    assert model.training  # the gallery evaluates in eval mode and restores the mode
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    assert info["true"] == [3, 4] and info["pred_clean"] == p.argmax(1).tolist()
    assert info["conf_clean"] == pytest.approx(p.max(1).values.tolist(), abs=1e-5)
    assert all(0 <= c <= 1 for c in info["conf_adv"])
    assert len(fig.axes) == 8 and all(not ax.get_xticks().size for ax in fig.axes)


def test_gallery_rejects_bad_images():
    model = attnguard.create_model("lenet", width=0.25)
    with pytest.raises(ValueError, match="N, 1 or 3, H, W"):
        gallery_figure(model, torch.rand(2, 2, 28, 28), torch.zeros(2, dtype=torch.long), PGD(0.1, steps=1))


def test_explain_run_directory(tmp_path, monkeypatch):
    model = attnguard.create_model("lenet", width=0.25)
    cfg = {"data": {"name": "fake"}, "model": {"name": "lenet"}, "adversary": {"eps": "8/255"}, "seed": 1}
    run = tmp_path / "my-run"
    atomic_torch_save({"format": "attnguard-checkpoint", "model_config": model.config, "model": model.state_dict(),
                       "config": cfg}, run / "checkpoints" / "last.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    g = torch.Generator().manual_seed(0)
    test = types.SimpleNamespace(images=torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8, generator=g),
                                 labels=torch.arange(10) % 10)
    info = types.SimpleNamespace(num_classes=10, class_names=[f"digit {i}" for i in range(10)])
    fake = types.ModuleType("attnguard.data")
    fake.load_dataset = lambda name, root=None: types.SimpleNamespace(info=info, train=test, test=test)
    monkeypatch.setitem(sys.modules, "attnguard.data", fake)
    out = explain(run, attack="fgsm", n=4, out=tmp_path / "gallery.png")
    check_png(out, 4, title=True)
    with pytest.raises(ConfigError, match="n must be"):
        explain(run, n=0, out=tmp_path / "x.png")
