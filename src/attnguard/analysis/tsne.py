"""t-SNE of penultimate features, clean vs adversarial (AFM Fig. 5).

The penultimate representation is the input of the model's final linear layer, captured with a
forward pre-hook. Clean examples are drawn as dots, adversarial ones as triangles pointing right
when still classified correctly and down when misclassified; colours are the true classes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ._figures import class_color, new_figure, save_png, styled
from ._run import attack_all, batched, class_name
from ..utils.modes import eval_mode


def final_linear(model: nn.Module) -> nn.Linear:
    """The model's classifier (``model.classifier`` when it names a Linear), else its last Linear."""
    name = getattr(model, "classifier", None)
    if isinstance(name, str):
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Linear):
            return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer to take penultimate features from")
    return linears[-1]


def penultimate_features(model: nn.Module, images: torch.Tensor, batch_size: int = 256):
    """``(features [N, D], logits [N, K])``: the input of the final linear layer and the outputs."""
    layer = final_linear(model)
    store = []
    handle = layer.register_forward_pre_hook(lambda _m, inputs: store.append(inputs[0].detach().flatten(1)))
    logits = []
    try:
        with torch.no_grad():
            for s in batched(len(images), batch_size):
                logits.append(model(images[s]).float())
    finally:
        handle.remove()
    return torch.cat(store).float(), torch.cat(logits)


@styled
def tsne_features(model, images: torch.Tensor, labels: torch.Tensor, attack, *, class_names: Optional[Sequence[str]] = None,
                  perplexity: float = 30.0, seed: int = 0, out="tsne.png", title: Optional[str] = None) -> dict:
    """Embed clean and adversarial penultimate features together with t-SNE and plot them.

    Returns the 2-D embedding and, per point, the true class, whether it is adversarial and
    whether the model classifies it correctly.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    device = next(model.parameters()).device
    x, y = images.to(device).float(), labels.to(device).long()
    n = len(x)
    if n < 3:
        raise ValueError("t-SNE needs at least 3 images")
    with eval_mode(model):
        x_adv = attack_all(attack, model, x, y)
        f_clean, l_clean = penultimate_features(model, x)
        f_adv, l_adv = penultimate_features(model, x_adv)
    feats = torch.cat([f_clean, f_adv]).cpu().numpy().astype(np.float64)
    perp = float(min(perplexity, max(1.0, (2 * n - 1) / 3)))
    # scikit-learn's OpenMP runtime and torch's fight over the cores (a 100x slowdown seen with two
    # torch threads); one thread is plenty for a few thousand points
    with threadpool_limits(1):
        emb = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(feats)
    true = np.concatenate([y.cpu().numpy()] * 2)
    is_adv = np.array([False] * n + [True] * n)
    correct = np.concatenate([(l_clean.argmax(1) == y).cpu().numpy(), (l_adv.argmax(1) == y).cpu().numpy()])

    fig = new_figure(6.4, 5.2)
    ax = fig.add_subplot()
    names = list(class_names) if class_names is not None else [str(i) for i in range(int(true.max()) + 1)]
    for c in np.unique(true):
        col = class_color(int(c))
        sel = true == c
        ax.scatter(*emb[sel & ~is_adv].T, s=12, color=col, marker="o", alpha=0.75, linewidths=0,
                   label=class_name(names, int(c)))
        ax.scatter(*emb[sel & is_adv & correct].T, s=22, color=col, marker=">", alpha=0.85, linewidths=0)
        ax.scatter(*emb[sel & is_adv & ~correct].T, s=22, color=col, marker="v", alpha=0.85, linewidths=0)
    handles, labels_ = ax.get_legend_handles_labels()
    for marker, text in (("o", "clean"), (">", "adversarial, correct"), ("v", "adversarial, misclassified")):
        handles.append(ax.scatter([], [], marker=marker, color="#555555", s=20))
        labels_.append(text)
    ax.legend(handles, labels_, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_title(title or "t-SNE of penultimate features (clean vs adversarial)")
    path = save_png(fig, out)
    return {"embedding": emb.tolist(), "labels": true.tolist(), "adversarial": is_adv.tolist(),
            "correct": correct.tolist(), "perplexity": perp, "path": str(path)}
