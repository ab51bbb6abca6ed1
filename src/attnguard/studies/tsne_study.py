"""Study ``tsne`` (AFM Fig. 6): how far adversarial images land from their class, two classes, models side by side.

AFM Fig. 6, "the separation of adversarial images from the natural samples": 200 CIFAR-10 test
images of two classes ("airplane" and "cat"), clean and adversarial, embedded with t-SNE; the
paper reads the defended models as drawing the adversarial images back towards their true class
(sec. IV-C). The representation is the penultimate one, as in Fig. 5 ("the penultimate fully
connected layer"): the input of the model's final linear layer
(:func:`attnguard.analysis.tsne.penultimate_features`).

``attnguard study tsne RUN [RUN ...]``: one panel per run, each its own t-SNE of the 4 n points
(n per class, clean and adversarial), four colours: class x clean/adversarial; adversarial images the
model misclassifies are hollow triangles. Options: ``classes`` (two class indices or names; default
``0,1``; the paper's airplane and cat are ``0,3`` on CIFAR-10), ``n`` (test images per class, the
first of each), ``attack`` (default ``pgd-20``, white-box on each model), ``eps`` (default the first
run's), ``perplexity``, ``seed``.

The separation number is the silhouette score (scikit-learn, Euclidean) of the clean-vs-adversarial
labelling of the 4 n penultimate feature vectors (``silhouette_clean_vs_adv``): near 1 when the
adversarial images form clusters of their own, near 0 or below when they lie among the clean ones.
It is computed on the features, not on the t-SNE map, whose distances t-SNE does not preserve (the
map's own score is reported too, as ``silhouette_clean_vs_adv_tsne``). ``adv_nearest_true_class``:
the share of adversarial feature vectors nearer to their own class's clean centroid than to the
other class's, Fig. 6's "closer to the true class".
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch

from ..analysis._figures import new_figure, save_png, styled
from ..analysis._run import attack_all, attack_name, class_name, make_attack
from ..analysis.tsne import penultimate_features
from ..errors import ConfigError
from ..utils.modes import eval_mode
from ._maps import device_of, eps_option, int_option
from ._runs import items_option, run_label, runs_on_one_dataset
from .registry import STUDIES

OPTIONS = {"classes": "0,1", "n": 100, "attack": "pgd-20", "eps": None, "perplexity": 30.0, "seed": 0}
# (class 0 clean, class 0 adversarial, class 1 clean, class 1 adversarial): a dark and a light shade per class
COLORS = ("#1f5fa8", "#7fb2e5", "#b2182b", "#f4a582")


def _classes(ctx, names: List[str]) -> Tuple[int, int]:
    items = items_option(ctx, "classes")
    out = []
    for item in items:
        if item in names:
            out.append(names.index(item))
        elif item.lstrip("-").isdigit() and 0 <= int(item) < len(names):
            out.append(int(item))
        else:
            raise ConfigError(f"study '{ctx.name}': unknown class {item!r}; classes are 0-{len(names) - 1} or "
                              f"{', '.join(names)}")
    if len(out) != 2 or out[0] == out[1]:
        raise ConfigError(f"study '{ctx.name}': option classes takes two different classes, got {items}")
    return out[0], out[1]


def _embed(feats: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perp = float(min(perplexity, max(1.0, (len(feats) - 1) / 3)))
    # one thread: scikit-learn's OpenMP and torch's fight over shared cores (analysis/tsne.py)
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(feats)


def _silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    return round(float(silhouette_score(points, labels)), 4)


def _nearest_true(feats: np.ndarray, cls: np.ndarray, adv: np.ndarray, classes) -> float:
    cents = np.stack([feats[(cls == c) & ~adv].mean(0) for c in classes])
    d = ((feats[adv][:, None, :] - cents[None]) ** 2).sum(-1)
    nearest = np.asarray(classes)[d.argmin(1)]
    return round(float((nearest == cls[adv]).mean()), 4)


def _panel(ax, emb, cls, adv, correct, classes, names, title):
    for k, (c, is_adv) in enumerate([(classes[0], False), (classes[0], True), (classes[1], False), (classes[1], True)]):
        sel = (cls == c) & (adv == is_adv)
        label = f"{class_name(names, c)}, {'adversarial' if is_adv else 'clean'}"
        if not is_adv:
            ax.scatter(*emb[sel].T, s=14, color=COLORS[k], marker="o", alpha=0.8, linewidths=0, label=label)
            continue
        ax.scatter(*emb[sel & correct].T, s=26, color=COLORS[k], marker="^", alpha=0.9, linewidths=0, label=label)
        ax.scatter(*emb[sel & ~correct].T, s=26, facecolors="none", edgecolors=COLORS[k], marker="^", linewidths=1.0)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_title(title, fontsize=8.5)


@styled
def tsne_study(ctx) -> dict:
    o = ctx.options
    n, seed = int_option(ctx, "n"), int_option(ctx, "seed", lo=0)
    perplexity = float(o["perplexity"])
    runs = runs_on_one_dataset(ctx)
    eps = eps_option(ctx, runs[0].eps)
    ds = runs[0].load_dataset()
    names = [str(c) for c in (getattr(ds.info, "class_names", None) or range(ds.info.num_classes))]
    classes = _classes(ctx, names)
    labels = torch.as_tensor(ds.test.labels).long()
    picked = [torch.nonzero(labels == c).flatten()[:n] for c in classes]
    if any(len(p) < 2 for p in picked):
        raise ConfigError(f"study '{ctx.name}': the test split has fewer than 2 images of class "
                          f"{[names[c] for c, p in zip(classes, picked) if len(p) < 2][0]}")
    idx = torch.cat(picked)
    images = torch.as_tensor(ds.test.images[idx.numpy()])
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    device = device_of(ctx)
    x, y = x.to(device), labels[idx].to(device)
    cls = np.concatenate([y.cpu().numpy()] * 2)
    adv = np.array([False] * len(y) + [True] * len(y))

    per_run, panels = [], []
    for run in runs:
        model = run.model(device)
        attack = make_attack(o["attack"], eps, seed=seed, num_classes=model.num_classes, device=device)
        with eval_mode(model):
            x_adv = attack_all(attack, model, x, y)
            f_clean, l_clean = penultimate_features(model, x)
            f_adv, l_adv = penultimate_features(model, x_adv)
        feats = torch.cat([f_clean, f_adv]).cpu().numpy().astype(np.float64)
        correct = torch.cat([l_clean.argmax(1) == y, l_adv.argmax(1) == y]).cpu().numpy()
        emb = _embed(feats, perplexity, seed)
        rec = {"run": str(run), "label": run_label(run), "defense": run.get("defense.preset"),
               "silhouette_clean_vs_adv": _silhouette(feats, adv),
               "silhouette_clean_vs_adv_tsne": _silhouette(emb, adv),
               "adv_nearest_true_class": _nearest_true(feats, cls, adv, classes),
               "clean_accuracy": round(float(correct[~adv].mean()), 4),
               "adversarial_accuracy": round(float(correct[adv].mean()), 4)}
        per_run.append(rec)
        panels.append((emb, correct, rec))

    fig = new_figure(4.0 * len(runs) + 1.9, 4.6)
    for k, (emb, correct, rec) in enumerate(panels):
        ax = fig.add_subplot(1, len(runs), k + 1)
        _panel(ax, emb, cls, adv, correct, classes, names,
               f"{rec['label']}\nsilhouette clean/adv {rec['silhouette_clean_vs_adv']:.2f}, "
               f"adv. acc {rec['adversarial_accuracy']:.0%}")
    handles, texts = fig.axes[0].get_legend_handles_labels()
    handles.append(fig.axes[0].scatter([], [], s=26, facecolors="none", edgecolors="#555555", marker="^"))
    texts.append("adversarial, misclassified")
    fig.legend(handles, texts, loc="center right", fontsize=8)
    fig.subplots_adjust(left=0.03, right=1 - 1.9 / (4.0 * len(runs) + 1.9), top=0.78, bottom=0.08, wspace=0.12)
    per_class = " and ".join(f"{len(p)} of class {class_name(names, c)}" for c, p in zip(classes, picked))
    fig.suptitle(f"t-SNE of penultimate features, clean and {attack_name(o['attack']).upper()} (eps={eps:.4g}) "
                 f"(AFM Fig. 6)\nn = {per_class} test images, each clean and adversarial; silhouette of "
                 "clean vs adversarial on the features", fontsize=10)
    save_png(fig, ctx.png, metadata={"Title": "attnguard tsne"})
    return {"separation": "silhouette_clean_vs_adv: silhouette score of the clean/adversarial labels on the "
                          "penultimate features (Euclidean); near 1 = adversarial images cluster apart",
            "attack": attack_name(o["attack"]), "eps": eps, "classes": [names[c] for c in classes],
            "n_per_class": [len(p) for p in picked], "test_indices": idx.tolist(), "runs": per_run}


STUDIES.add("tsne", tsne_study,
            "t-SNE of penultimate features of two classes, clean vs adversarial, one panel per model",
            paper="AFM Fig. 6", min_runs=1, max_runs=6, options=OPTIONS)
