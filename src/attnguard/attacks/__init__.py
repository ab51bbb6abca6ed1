"""Attacks: each one a small callable ``attack(model, x, y) -> x_adv`` on [0, 1] inputs."""

from .base import Attack, preserved_state, project
from .fgsm import FGSM
from .losses import CrossEntropyLoss, CWLoss, LogitLoss, make_loss, margin
from .pgd import PGD

__all__ = ["Attack", "preserved_state", "project", "FGSM", "PGD", "CrossEntropyLoss", "CWLoss", "LogitLoss",
           "make_loss", "margin"]
