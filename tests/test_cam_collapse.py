"""tools/cam_collapse.py: collapse statistics of class activation maps, computed by hand on made-up maps."""
import importlib.util
from pathlib import Path

import pytest
import torch

TOOL = Path(__file__).resolve().parents[1] / "tools" / "cam_collapse.py"


@pytest.fixture
def tool():
    spec = importlib.util.spec_from_file_location("cam_collapse", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_statistics_by_hand(tool, monkeypatch):
    cams = torch.tensor([[[0.0, 0.0], [0.0, 0.0]],    # zero everywhere: flat
                         [[1.0, 3.0], [0.0, 0.0]],    # mean 1, std (sample) sqrt(2) -> CV 1.414
                         [[3.0, 1.0], [0.0, 0.0]]])   # same values, other top cell
    logits = torch.tensor([[-1.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    y = torch.tensor([0, 0, 0])
    monkeypatch.setattr(tool, "grad_cam", lambda model, layer, x, target, return_logits: (cams, logits))
    r = tool.collapse(torch.nn.Identity(), torch.zeros(3, 1, 2, 2), y, top=1, pairs=50)
    assert r["accuracy"] == pytest.approx(1 / 3)  # only image 1 has its class 0 highest
    assert r["true_logit"] == pytest.approx((-1 + 2 + 0) / 3)
    assert r["zero_maps"] == pytest.approx(1 / 3) and r["flat_maps"] == pytest.approx(1 / 3)
    assert r["cam_mean"] == pytest.approx(8 / 12)
    assert r["cam_cv"] == pytest.approx(2 ** 0.5)  # over the two live maps
    assert r["top_iou"] == 0.0  # the two live maps' top cells differ; the flat map takes no part
    cams[2] = cams[1]
    assert tool.collapse(torch.nn.Identity(), torch.zeros(3, 1, 2, 2), y, top=1, pairs=50)["top_iou"] == 1.0
    cams[1:] = 0
    r = tool.collapse(torch.nn.Identity(), torch.zeros(3, 1, 2, 2), y, top=1, pairs=50)
    assert r["flat_maps"] == 1.0 and r["top_iou"] is None and r["cam_cv"] is None
