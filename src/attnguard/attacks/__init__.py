"""Attacks: each one a small callable ``attack(model, x, y) -> x_adv`` on [0, 1] inputs.

One file per attack, each citing its paper: ``fgsm.py`` (Goodfellow et al. 2015), ``stepll.py``
(AAD eq. 4; Kurakin et al. 2017), ``pgd.py`` (Madry et al. 2018; CW-k with the CW margin loss),
``a3.py`` (AAD eq. 11-13), ``autoattack.py`` (Croce & Hein 2020, standard settings),
``square.py`` (Andriushchenko et al. 2020), ``rays.py`` (Chen & Gu 2020), ``transfer.py``.
``registry.py`` maps CLI names (``pgd-20``, ``cw-20``, ``a3-pgd-20``, ...) to configured attacks.
"""

from .a3 import A3
from .autoattack import AutoAttack
from .base import Attack, preserved_state, project
from .fgsm import FGSM
from .losses import CrossEntropyLoss, CWLoss, LogitLoss, make_loss, margin
from .pgd import PGD
from .rays import RayS
from .registry import ATTACKS, build_attack, parse_attack
from .square import Square
from .stepll import IterStepLL, StepLL
from .transfer import Transfer

__all__ = ["Attack", "preserved_state", "project", "FGSM", "PGD", "StepLL", "IterStepLL", "A3", "AutoAttack",
           "Square", "RayS", "Transfer", "CrossEntropyLoss", "CWLoss", "LogitLoss", "make_loss", "margin",
           "ATTACKS", "build_attack", "parse_attack"]
