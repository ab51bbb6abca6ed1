"""Attention analyses and plots of the papers.

Paper map:
    AAD Fig. 1, 7      clean/adversarial Grad-CAM gallery     :func:`explain`, :func:`save_gallery` (gallery.py)
    AAD Tables 1-2     attention vs box, eq. 5                :func:`box_iou`, :func:`box_tables` (iou.py, attention_stats.py)
    AAD Table 3        clean vs adversarial attention, eq. 6  :func:`cell_iou` (iou.py)
    AAD Tables 4-5     LIME attention                          :func:`lime_maps` (lime_maps.py)
    AT+ALP Table 3     activation inside key regions          :func:`mean_activation_in` (iou.py)
    AFM Fig. 3, AT+ALP Fig. 6   loss landscape                :func:`loss_landscape` (landscape.py)
    AFM Fig. 4         accuracy vs PGD iterations             :func:`accuracy_vs_iterations` (plots.py)
    AFM Fig. 5         t-SNE of penultimate features          :func:`tsne_features` (tsne.py)

Run-level entry points (for the CLI): :func:`explain`, :func:`analyze`.
"""

from .analyze import analyze, analyze_model, plot_analysis
from .attention_stats import attention_statistics, box_tables
from .boxes import load_boxes, read_csv, read_voc
from .gallery import explain, gallery_figure, save_gallery
from .iou import box_iou, boxes_to_mask, cell_iou, equal_area_mask, mean_activation_in, to_grid
from .lime_maps import lime_maps
from .plots import (accuracy_vs_eps, accuracy_vs_iterations, loss_landscape, penultimate_features, read_metrics,
                    training_curves, tsne_features)

__all__ = [
    "explain", "gallery_figure", "save_gallery", "analyze", "analyze_model", "plot_analysis",
    "attention_statistics", "box_tables", "load_boxes", "read_csv", "read_voc", "box_iou", "boxes_to_mask",
    "cell_iou", "equal_area_mask", "mean_activation_in", "to_grid", "lime_maps", "accuracy_vs_eps",
    "accuracy_vs_iterations", "loss_landscape", "penultimate_features", "read_metrics", "training_curves",
    "tsne_features",
]
