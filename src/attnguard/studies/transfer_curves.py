"""``transfer-curves`` (AT+ALP Fig. 3): accuracy against PGD iterations under gray- and black-box attacks.

AT+ALP sec. 5.3: in the *gray-box* setting the attacker knows the architecture and the defense but
not the weights, and crafts PGD on an independently trained copy (same architecture, same defense,
another seed); in the *black-box* setting the examples are crafted on a model of another
architecture (their ResNet-152 for a ResNet-101). Fig. 3 plots top-1 accuracy against the number
of PGD iterations (10 to 200), one line per defense.

``attnguard study transfer-curves TARGET [TARGET ...] --set sources=SRC[,SRC ...]``: ``sources[i]``
crafts the attack for ``targets[i]`` (one source alone crafts for every target). The setting of
each pair is read from the two runs' configs: the same run is white-box, the same architecture
(``model.name``, ``model.width``, ``model.options``) gray-box, another architecture black-box. Each
setting present gets a panel; the legend names the source of every line. With ``white_box=true``
(default) each panel also draws each target's white-box curve (PGD on the target itself), dashed,
as the reference the transferred attack is measured against.

Counting follows the evaluation's rule (an example the target gets wrong when clean is not attacked
and counts as wrong): accuracy = share of the ``n`` examples the target classifies correctly both
clean and after the attack, so the numbers match ``attnguard eval --attacks transfer:SRC:pgd-K``.
The transferred examples depend on the source alone, so each source's PGD-K is run once and
shared by its targets (through :class:`attnguard.attacks.transfer.Transfer`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from ..analysis._figures import PALETTE, new_figure, save_png, styled
from ..analysis._run import attack_all, load_test_data, predict
from ..attacks.registry import build_attack
from ..attacks.transfer import Transfer
from ..errors import ConfigError
from ..rundir import RunDir, parse_eps
from ..utils.modes import eval_mode
from ._maps import device_of, eps_option, int_option
from ._runs import items_option, run_label, run_name
from .registry import STUDIES

OPTIONS = {"sources": None, "iterations": "10,20,50,100,200", "n": 500, "eps": None, "step_size": None,
           "white_box": True, "seed": 0}
SETTINGS = {  # panel order, and what each setting means (panel titles)
    "gray-box": "gray-box: crafted on an independently trained copy\n(same architecture and defense, other weights)",
    "black-box": "black-box: crafted on a model of another architecture",
    "white-box": "white-box: crafted on the target itself",
}


def architecture(run: RunDir) -> Tuple[str, str, str]:
    """What "the same architecture" compares: model name, width and extra model options."""
    opts = run.get("model.options") or {}
    return (str(run.get("model.name")), str(run.get("model.width")), json.dumps(opts, sort_keys=True, default=str))


def arch_text(run: RunDir) -> str:
    name, width, _ = architecture(run)
    return name if width in ("None", "1", "1.0") else f"{name} w{width}"


def setting_of(source: RunDir, target: RunDir) -> str:
    if Path(source.target).resolve() == Path(target.target).resolve():
        return "white-box"
    return "gray-box" if architecture(source) == architecture(target) else "black-box"


def _sources(ctx, n_targets: int) -> List[str]:
    if ctx.options["sources"] in (None, ""):
        raise ConfigError(f"study '{ctx.name}' needs the runs that craft the attack: --set sources=SRC1,SRC2,... "
                          "(sources[i] attacks target i; one source attacks every target)")
    sources = items_option(ctx, "sources")
    if len(sources) == 1:
        sources = sources * n_targets
    if len(sources) != n_targets:
        raise ConfigError(f"study '{ctx.name}': {n_targets} target run(s) but {len(sources)} sources; give one "
                          "source per target (sources[i] crafts for target i) or a single source for all")
    return sources


def _iterations(ctx) -> List[int]:
    out = []
    for item in items_option(ctx, "iterations"):
        if not item.isdigit() or int(item) < 1:
            raise ConfigError(f"study '{ctx.name}': iterations must be whole numbers >= 1, got {item!r}")
        out.append(int(item))
    return sorted(set(out))


def _pair_notes(i: int, src: RunDir, tgt: RunDir, setting: str, eps: float) -> List[str]:
    notes = []
    if setting == "gray-box":
        if src.get("defense.preset") != tgt.get("defense.preset"):
            notes.append(f"pair {i + 1}: the gray-box source {run_name(src)} has defense {src.get('defense.preset')}, "
                         f"the target {tgt.get('defense.preset')} (AT+ALP's gray-box attacker uses the same defense)")
        if src.seed == tgt.seed:
            notes.append(f"pair {i + 1}: source and target share seed {tgt.seed}; not an independently trained copy")
    if abs(tgt.eps - eps) > 1e-9:
        notes.append(f"{run_name(tgt)} was trained at eps {tgt.eps:.4g}, attacked at {eps:.4g}")
    return notes


def _draw(out, pairs: List[dict], white: Dict[str, List[float]], iterations, title: str, subtitle: str) -> None:
    present = [s for s in SETTINGS if any(p["setting"] == s for p in pairs)]
    fig = new_figure(5.2 * len(present) + 0.4, 5.4)
    colors = {t: PALETTE[k % len(PALETTE)] for k, t in enumerate(dict.fromkeys(p["target"] for p in pairs))}
    for k, setting in enumerate(present):
        ax = fig.add_subplot(1, len(present), k + 1)
        drawn = set()
        for p in (p for p in pairs if p["setting"] == setting):
            c = colors[p["target"]]
            ax.plot(iterations, [100 * a for a in p["accuracy"]], "-o", color=c, ms=4, lw=1.8,
                    label=f"{p['target_label']} ← {p['source_name']} ({p['source_arch']})\n"
                          f"clean {p['clean_accuracy']:.0%}")
            if p["target"] in white and setting != "white-box" and p["target"] not in drawn:
                drawn.add(p["target"])
                ax.plot(iterations, [100 * a for a in white[p["target"]]], "--", color=c, lw=1.2, alpha=0.8,
                        label=f"{p['target_label']}: white-box reference")
        ax.set_xscale("log")
        ax.set_xticks(iterations)
        ax.set_xticklabels([str(i) for i in iterations])
        ax.minorticks_off()
        ax.set_ylim(-2, 102)
        ax.set_xlabel("PGD iterations")
        ax.set_ylabel("top-1 accuracy on attacked test images (%)")
        ax.set_title(SETTINGS[setting], fontsize=9)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7.5, ncol=1)
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
    fig.subplots_adjust(top=0.8, bottom=0.3, wspace=0.3)
    save_png(fig, out, metadata={"Title": "attnguard transfer-curves"})


@styled
def transfer_curves(ctx) -> dict:
    o = ctx.options
    targets = [RunDir(r) for r in ctx.runs]
    sources = [RunDir(s) for s in _sources(ctx, len(targets))]
    iterations, n, seed = _iterations(ctx), int_option(ctx, "n"), int_option(ctx, "seed", lo=0)
    datasets = {r.dataset for r in targets + sources}
    if len(datasets) > 1:
        listed = ", ".join(dict.fromkeys(f"{run_name(r)}: {r.dataset}" for r in targets + sources))
        raise ConfigError(f"study '{ctx.name}': the targets and sources must share a dataset; got {listed}")
    eps = eps_option(ctx, targets[0].eps)
    step = None if o["step_size"] in (None, "") else parse_eps(o["step_size"])
    device = device_of(ctx)
    data = load_test_data(targets[0], n)
    x, y = data.images.to(device), data.labels.to(device)
    n = len(y)

    models: Dict[str, torch.nn.Module] = {}

    def model_of(run: RunDir):
        key = str(Path(run.target).resolve())
        if key not in models:
            models[key] = run.model(device).eval()
        return models[key]

    def pgd(k: int, num_classes: int):
        return build_attack(f"pgd-{k}", eps, seed=seed, num_classes=num_classes, device=device, step_size=step)

    crafted: Dict[Tuple[str, int], torch.Tensor] = {}
    pairs, notes = [], []
    for i, (tgt, src) in enumerate(zip(targets, sources)):
        setting = setting_of(src, tgt)
        notes += _pair_notes(i, src, tgt, setting, eps)
        t_model, s_model = model_of(tgt), model_of(src)
        with eval_mode(t_model):
            clean_ok = predict(t_model, x).argmax(1) == y
        acc = []
        for k in iterations:
            key = (str(Path(src.target).resolve()), k)
            if key not in crafted:
                base = pgd(k, s_model.num_classes)
                base.skip_misclassified = False  # every example crafted, so the result is the source's alone
                with eval_mode(s_model):
                    crafted[key] = attack_all(Transfer(s_model, base), t_model, x, y)
            with eval_mode(t_model):
                adv_ok = predict(t_model, crafted[key]).argmax(1) == y
            acc.append(round(float((clean_ok & adv_ok).float().mean()), 4))
        pairs.append({"target": str(tgt), "target_label": run_label(tgt), "defense": tgt.get("defense.preset"),
                      "arch": arch_text(tgt), "source": str(src), "source_name": run_name(src),
                      "source_defense": src.get("defense.preset"), "source_arch": arch_text(src), "setting": setting,
                      "clean_accuracy": round(float(clean_ok.float().mean()), 4), "accuracy": acc})

    white: Dict[str, List[float]] = {}
    if bool(o["white_box"]):
        for tgt in targets:
            if str(tgt) in white:
                continue
            t_model = model_of(tgt)
            with eval_mode(t_model):
                white[str(tgt)] = [round(float((predict(t_model, attack_all(pgd(k, t_model.num_classes), t_model, x, y))
                                                .argmax(1) == y).float().mean()), 4) for k in iterations]

    step_text = f"step {step:.4g}" if step is not None else "step 2.5·ε/K"
    _draw(ctx.png, pairs, white, iterations, "Accuracy under transferred PGD attacks (AT+ALP Fig. 3)",
          f"PGD-K (L∞, ε={eps:.4g}, {step_text}, random start), K = {', '.join(map(str, iterations))} · "
          f"n={n} test examples of {targets[0].dataset}")
    return {"attack": "pgd", "eps": eps, "step_size": step if step is not None else "2.5*eps/K", "n": n,
            "seed": seed, "iterations": iterations, "pairs": pairs, "white_box": white,
            "accuracy_rule": "share of the n examples the target classifies correctly clean and after the attack",
            "notes": list(dict.fromkeys(notes))}


STUDIES.add("transfer-curves", transfer_curves,
            "accuracy against PGD iterations, attack crafted on another run (gray-box: same architecture, "
            "black-box: another), one line per defense; --set sources=SRC,...", paper="AT+ALP Fig. 3",
            min_runs=1, max_runs=8, options=OPTIONS)
