"""``evaluate()``: clean, per-attack and worst-case accuracy, plus the optional sanity checks.

The building blocks live in :mod:`attnguard.evaluation.blocks`, which :mod:`.sanity` also uses, so
the two import in one direction only (blocks <- sanity <- core).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..utils.modes import eval_mode
from ..utils.precision import full_precision
from .blocks import PerExample, _frac, attack_correct, check_eps, check_inputs, model_device, resolve_attacks
from .results import worst_cases
from .sanity import check_components_square, run_sanity


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attacks, eps: float,
             sanity: bool = False, *, batch_size: int = 256, device=None, seed: int = 0, progress: bool = True,
             dataset: Optional[str] = None, model_name: Optional[str] = None, norm: str = "linf",
             sanity_examples: int = 200, return_per_example: bool = False
             ) -> Union[dict, Tuple[dict, PerExample]]:
    """Clean, per-attack and worst-case accuracy of ``model`` on ``images`` ([0, 1] floats) and ``labels``.

    Args:
        attacks: names (``build_attack``: ``fgsm``, ``pgd-20``, ``autoattack``...) and/or attack
            objects (``attack(model, x, y) -> x_adv``) whose eps and norm match the evaluation's.
            A name may end in ``@N`` (``autoattack@300``): that attack runs on the first N examples.
        eps, norm: the threat model; named attacks are built with it, and every adversarial batch
            is checked to lie in the ball and in [0, 1].
        sanity: run the Carlini et al. (2019) checks of :mod:`attnguard.evaluation.sanity` on the
            first ``sanity_examples`` examples.
        device: where batches go (default: the model's device); the model is moved there.
        seed: seeds named attacks and the random state inside the evaluation (restored after).
        return_per_example: also return the :class:`PerExample` correctness.

    Returns:
        ``{"dataset", "model", "eps", "norm", "n_examples", "clean", "attacks": {name: acc},
        "n_per_attack": {name: n}, "worst_case", "n_worst", "worst_cases", "seconds": {name: s},
        "sanity": [{"check", "status", "detail"}]}``, with accuracies as fractions in [0, 1].
        ``worst_case`` is over every attack on the first ``n_worst`` examples (all of them unless an
        attack ran on a subset); ``worst_cases`` lists it and, when attacks ran on different numbers
        of examples, the worst case over the attacks that ran on more (see
        :func:`~attnguard.evaluation.results.worst_cases`). Plus ``"autoattack_components"`` (see
        :func:`component_breakdown`) when an attack reports its components. The sanity list holds
        the AutoAttack Square check (:func:`~attnguard.evaluation.sanity.check_components_square`)
        even without ``sanity``. The model's train/eval flags are restored on return.
    """
    eps = check_eps(eps, norm)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if device is None:
        device = model_device(model)
    else:
        from ..utils.runtime import pick_device

        device = pick_device(device) if isinstance(device, str) else torch.device(device)
        model.to(device)
    n, num_classes = check_inputs(model, images, labels)
    resolved = resolve_attacks(attacks, eps, norm=norm, seed=seed, num_classes=num_classes, device=device)
    forked = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    # the attacks judge robustness, so they run in fp32 even inside a caller's autocast or with TF32 on
    with torch.random.fork_rng(devices=forked), eval_mode(model), full_precision(torch.device(device).type):
        torch.manual_seed(seed)
        per = attack_correct(model, resolved, images, labels, eps, norm=norm, batch_size=batch_size,
                             device=device, progress=progress)
        checks = []
        if sanity:
            checks = run_sanity(model, images, labels, eps, per, norm=norm, seed=seed, device=device,
                                batch_size=batch_size, num_classes=num_classes, n_sub=sanity_examples,
                                progress=progress)
    # AutoAttack's own flag (Square gaining on the gradient attacks) costs nothing: always reported.
    checks += check_components_square(per)
    result = {
        "dataset": dataset,
        "model": model_name or getattr(model, "arch", None) or type(model).__name__,
        "eps": eps,
        "norm": norm,
        "n_examples": int(n),
        "clean": _frac(per.clean),
        "attacks": {k: _frac(v) for k, v in per.attacks.items()},
        "n_per_attack": {k: int(v.numel()) for k, v in per.attacks.items()},
        "worst_case": _frac(per.robust),
        "n_worst": per.n_worst,
        "worst_cases": worst_cases(per.clean.tolist(), {k: v.tolist() for k, v in per.attacks.items()}),
        "seconds": {k: round(v, 4) for k, v in per.seconds.items()},
        "sanity": checks,
    }
    if per.components:
        result["autoattack_components"] = component_breakdown(per)
    return (result, per) if return_per_example else result


def component_breakdown(per: PerExample) -> dict:
    """``{attack: {"n_examples", "robust": {component: accuracy}, "seconds": {component: s}}}`` for the
    attacks that report components (AutoAttack): the robust accuracy after each component, cumulative
    over the components run so far (the authors' ``robust accuracy after APGD-CE / APGD-T / ...``), so
    the last one is the attack's own column."""
    return {label: {"n_examples": int(per.attacks[label].numel()), "robust": {c: _frac(m) for c, m in comps.items()},
                    "seconds": {c: round(v, 4) for c, v in per.component_seconds.get(label, {}).items()}}
            for label, comps in per.components.items()}
