"""A plain-text digest of ``analyze`` results for the terminal."""

from __future__ import annotations


def _f(v) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def summary_text(r: dict) -> str:
    """The tables of an ``analysis.json`` as aligned text (AAD Tables 1-5, AT+ALP Table 3)."""
    out = [f"{r.get('run')}: {r.get('model')} / {r.get('defense')} on {r.get('dataset')}, attack {r.get('attack_used')} "
           f"at eps {r.get('eps'):.4g}; {r.get('n_correct')} of {r.get('n_examples')} correct clean, "
           f"{r.get('n_succeed')} fooled (I_succeed), {r.get('n_fail')} not fooled (I_fail)"]
    cva = r.get("clean_vs_adv")
    if cva:
        out.append(f"AAD Table 3: IoU of the top-k attention cells, clean vs adversarial ({cva.get('grid')} grid)")
        out.append("  cells   I_succeed   I_fail")
        out += [f"  {row['cells']:>5}   {_f(row['succeed']):>9}   {_f(row['fail']):>6}" for row in cva["rows"]]
    box = r.get("attention_vs_box")
    if box:
        t1, t2 = box["table1"], box["table2"]
        out.append("AAD Table 1: attention vs box IoU (equal-area threshold)  "
                   f"I_succeed {t1['succeed']['percentage']:.1%} IoU {_f(t1['succeed']['iou'])} | "
                   f"I_fail {t1['fail']['percentage']:.1%} IoU {_f(t1['fail']['iou'])}")
        out.append(f"AAD Table 2: images with IoU < {t2['threshold']} ({t2['n_images']})  "
                   f"I_succeed {t2['succeed']['percentage']:.1%} conf {_f(t2['succeed']['confidence'])} | "
                   f"I_fail {t2['fail']['percentage']:.1%} conf {_f(t2['fail']['confidence'])}")
    act = r.get("activation_in_region")
    if act:
        for region, v in act.items():
            out.append(f"AT+ALP Table 3: mean normalized activation inside the {region}: clean {_f(v['clean'])}, "
                       f"adversarial {_f(v['adv'])}")
    lime = r.get("lime")
    if lime:
        for key, what in (("table4", "LIME vs box"), ("table5", "LIME clean vs adversarial")):
            for row in lime.get(key, []):
                out.append(f"AAD Table {key[-1]} ({what}), top {row['features']} features: "
                           f"I_succeed {_f(row['succeed'])}, I_fail {_f(row['fail'])}")
    out += [f"note: {n}" for n in r.get("notes", [])]
    return "\n".join(out)
