"""``part-activations`` (AT+ALP Table 3): the average activation on the discriminative parts, per defense.

AT+ALP Table 3 compares defenses by the "normalized activations" their models put on the
human-annotated key regions of the 17 Flowers test images, under attack: AT+ALP's are the highest,
read as the model looking at more discriminative features. The paper does not spell out the
normalization; we read it as the activation attention map of Fig. 4 (``F(A) = sum_c |A_c|^2``, the
map AT+ALP eq. 4 pairs), min-max normalized per image to [0, 1] and upsampled to the image
(:func:`attnguard.analysis.iou.mean_activation_in`, the same reading the ``analyze`` command applies
to Grad-CAM), averaged over the pixels of the region.

``attnguard study part-activations RUN [RUN ...]``: the regions are the boxes of the dataset
(``synthetic-boxes`` knows each object's box), or ``boxes=FILE_OR_DIR`` (VOC XML or CSV, read by
:func:`attnguard.analysis.boxes.load_boxes` as ``attnguard analyze --boxes`` reads them). For each
run and layer group, on the first ``n`` test images: the mean normalized activation inside the box
and outside it, on the clean image and on the adversarial one (``attack``, default PGD-20 white-box
against each run; ``transfer:SRC:pgd-200`` gives the paper's gray-/black-box columns), and the share
of the map's mass inside the box beside the box's share of the image. Writes the bar chart (one
panel per group), the numbers, and ``part-activations.md`` (the table) next to the PNG.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ..analysis._figures import new_figure, save_png, styled
from ..analysis._run import attack_name, load_test_data
from ..analysis.boxes import load_boxes
from ..analysis.iou import boxes_to_mask, mean_activation_in, nanmean
from ..attention import upsample_cam
from ..errors import DataError
from ..io import atomic_write_text
from ._maps import device_of, eps_option, int_option
from ._runs import run_label, runs_on_one_dataset
from .group_maps import clean_and_adversarial_groups
from .registry import STUDIES

OPTIONS = {"n": 500, "attack": "pgd-20", "eps": None, "boxes": None}
BARS = (("clean", "inside"), ("clean", "outside"), ("adv", "inside"), ("adv", "outside"))
COLORS = {("clean", "inside"): "#1f5fa8", ("clean", "outside"): "#9ecae1", ("adv", "inside"): "#b2182b",
          ("adv", "outside"): "#f4a582"}


def _round(v: Optional[float]) -> Optional[float]:
    return None if v is None else round(v, 4)


def mass_inside(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per image, the share of the (non-negative) map's sum that falls inside ``region``; NaN for an empty region."""
    up = upsample_cam(maps.float(), tuple(region.shape[-2:])).clamp_min(0)
    share = (up * region).flatten(1).sum(1) / up.flatten(1).sum(1).clamp_min(1e-12)
    return torch.where(region.flatten(1).any(1), share, torch.full_like(share, float("nan")))


def region_stats(maps: torch.Tensor, region: torch.Tensor) -> dict:
    """Means over the images that have a box (an image without one has no inside, so no outside either)."""
    outside = mean_activation_in(maps, ~region)
    outside[~region.flatten(1).any(1)] = float("nan")
    return {"inside": _round(nanmean(mean_activation_in(maps, region))), "outside": _round(nanmean(outside)),
            "mass_inside": _round(nanmean(mass_inside(maps, region)))}


def _regions(ctx, data, size) -> tuple:
    h, w = size
    source = ctx.options["boxes"]
    if source not in (None, ""):
        boxes = load_boxes(source, len(data.labels), (h, w), data.filenames)
        return boxes_to_mask(boxes, h, w), str(source)
    if data.boxes is None:
        raise DataError(f"study '{ctx.name}' needs object boxes: the run's dataset has none; give them with "
                        "--set boxes=FILE_OR_DIR (Pascal VOC XML or CSV, as attnguard analyze --boxes), or use a "
                        "dataset with boxes (synthetic-boxes)")
    return boxes_to_mask(data.boxes, h, w), "dataset"


def _markdown(per_run: List[dict], head: str) -> str:
    lines = [head, "", "| run | defense | group | layer | clean inside | clean outside | adv inside | adv outside | "
             "mass inside clean | mass inside adv |", "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for r in per_run:
        for g in r["groups"]:
            c, a = g["clean"], g["adv"]
            lines.append(f"| {r['label']} | {r['defense']} | {g['group']} | {g['layer']} | {fmt(c['inside'])} | "
                         f"{fmt(c['outside'])} | {fmt(a['inside'])} | {fmt(a['outside'])} | {fmt(c['mass_inside'])} "
                         f"| {fmt(a['mass_inside'])} |")
    return "\n".join(lines) + "\n"


def _draw(out, per_run: List[dict], title: str) -> None:
    n_groups = max(len(r["groups"]) for r in per_run)
    width = max(4.2, 1.1 * len(per_run) + 1.6)
    fig = new_figure(width * n_groups + 0.4, 5.2)
    for j in range(n_groups):
        ax = fig.add_subplot(1, n_groups, j + 1)
        layers = sorted({r["groups"][j]["layer"] for r in per_run if j < len(r["groups"])})
        for b, (kind, where) in enumerate(BARS):
            xs, vals = [], []
            for i, r in enumerate(per_run):
                v = r["groups"][j][kind][where] if j < len(r["groups"]) else None
                if v is not None:
                    xs.append(i + (b - 1.5) * 0.2)
                    vals.append(v)
            label = f"{'clean' if kind == 'clean' else 'adversarial'}, {where} the box"
            bars = ax.bar(xs, vals, width=0.19, color=COLORS[kind, where], label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        ax.set_xticks(range(len(per_run)))
        ax.set_xticklabels([r["label"].replace(" (", "\n(") for r in per_run], fontsize=7.5)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("mean normalized activation (0-1)")
        ax.set_title(f"group-{j} ({', '.join(layers)})", fontsize=9)
    fig.axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7.5)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(top=0.8, bottom=0.3, wspace=0.3)
    save_png(fig, out, metadata={"Title": "attnguard part-activations"})


def boxed_examples(ctx, run, n: int, device):
    """The first ``n`` test images and labels of ``run``'s dataset on ``device``, their box masks
    ``[N, H, W]`` and where the boxes came from; an error when none of them has a box."""
    data = load_test_data(run, n)
    x, y = data.images.to(device), data.labels.to(device)
    region, box_source = _regions(ctx, data, x.shape[-2:])
    if not bool(region.flatten(1).any(1).any()):
        raise DataError(f"study '{ctx.name}': none of the first {len(y)} test images has a box")
    return x, y, region, box_source


@styled
def part_activations(ctx) -> dict:
    runs = runs_on_one_dataset(ctx)
    n = int_option(ctx, "n")
    attack = str(ctx.options["attack"]).strip().lower()
    eps = eps_option(ctx, runs[0].eps)
    device = device_of(ctx)
    x, y, region, box_source = boxed_examples(ctx, runs[0], n, device)
    n = len(y)
    with_box = int(region.flatten(1).any(1).sum())

    per_run = []
    for run in runs:
        model, x_adv, (p_clean, m_clean), (p_adv, m_adv) = clean_and_adversarial_groups(run, attack, eps, x, y, device)
        y_cpu = y.cpu()
        groups = [{"group": j, "layer": layer, "clean": region_stats(m_clean[j], region),
                   "adv": region_stats(m_adv[j], region)} for j, layer in enumerate(model.group_layers)]
        per_run.append({"run": str(run), "label": run_label(run), "defense": run.get("defense.preset"),
                        "acc_clean": round(float((p_clean.argmax(1) == y_cpu).float().mean()), 4),
                        "acc_adv": round(float((p_adv.argmax(1) == y_cpu).float().mean()), 4), "groups": groups})

    box_share = _round(float(region.float().flatten(1).mean(1)[region.flatten(1).any(1)].mean()))
    setting = f"{attack_name(attack)}, ε={eps:.3g}" + ("" if attack.startswith("transfer:") else ", white-box")
    title = (f"Average activation on the object box vs outside it (AT+ALP Table 3)\n{setting} · n={n} test images "
             f"of {runs[0].dataset} ({with_box} with a box, boxes: {box_source}; the box covers {box_share:.0%} of "
             "an image on average)\nactivation attention F(A) = Σ_c |A_c|² of each group (AT+ALP eq. 4), min-max "
             "normalized per image, mean over the pixels inside / outside the box")
    _draw(ctx.png, per_run, title)
    md = ctx.out_dir / f"{ctx.name}.md"
    atomic_write_text(md, _markdown(per_run, f"# Average activation on the object box (AT+ALP Table 3)\n\n"
                                             f"{setting}; n = {n} test images of {runs[0].dataset}, {with_box} with a "
                                             f"box (boxes: {box_source}); mean box share of the image {box_share}. "
                                             "Values: activation attention F(A) = sum_c |A_c|^2, min-max normalized "
                                             "per image, averaged over the pixels inside / outside the box; mass "
                                             "inside: share of the map's sum inside the box."))
    return {"attack": attack_name(attack), "eps": eps, "n": n, "n_with_box": with_box, "boxes": box_source,
            "box_share": box_share, "table": md.name,
            "maps": "activation attention F(A) = sum_c |A_c|^2 per group (AT+ALP eq. 4), min-max normalized per "
                    "image, upsampled to the image; inside/outside: mean over the pixels; mass_inside: share of the "
                    "map's sum inside the box",
            "runs": per_run}


STUDIES.add("part-activations", part_activations,
            "mean normalized activation attention inside vs outside the object box, clean and adversarial, per "
            "defense and layer group (synthetic-boxes or --set boxes=FILE)", paper="AT+ALP Table 3",
            min_runs=1, max_runs=8, options=OPTIONS)
