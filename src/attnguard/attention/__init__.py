"""Differentiable attention maps: Grad-CAM (AAD), activation attention (AT+ALP), CAM features (AFM).

Paper map:
    AAD eq. 1-2   Grad-CAM                      :func:`grad_cam` (gradcam.py)
    AAD eq. 3     attention area                :func:`attention_area` (area.py)
    AAD eq. 5-6   IoU of attention areas        :func:`mask_iou` (area.py)
    AT+ALP eq. 4  activation attention Q/||Q||  :func:`attention_vector` (activation.py)
    AFM eq. 3     class-activation feature      :func:`class_activation_feature` (gradcam.py)
"""

from .activation import activation_attention, attention_vector
from .area import attention_area, mask_iou, top_k_mask
from .gradcam import (cam_from_activation, class_activation_feature, closed_form_classifier, grad_cam,
                      normalize_cam, upsample_cam)
from .hooks import capture, forward_with_activations, resolve_layer

__all__ = [
    "grad_cam", "cam_from_activation", "class_activation_feature", "closed_form_classifier",
    "normalize_cam", "upsample_cam", "attention_vector", "activation_attention", "attention_area",
    "mask_iou", "top_k_mask", "capture", "forward_with_activations", "resolve_layer",
]
