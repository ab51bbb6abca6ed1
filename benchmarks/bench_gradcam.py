"""Grad-CAM throughput: attnguard.attention.grad_cam against pytorch-grad-cam's GradCAM.

Same model, same layer (the ResNet-18's ``layer4``, whose output is its last block's output),
same batch, eval mode, the predicted class as target in both. pytorch-grad-cam returns maps
ReLU'd, min-max normalized per image and resized to the input size, as a host array; so the
"full" attnguard rows time ``grad_cam`` + ``normalize_cam`` + ``upsample_cam`` to the input size
+ ``.cpu()`` (a no-op on CPU), the same output. The "raw map" rows time ``grad_cam`` alone
(``[B, h, w]`` at the layer's resolution, unnormalized). attnguard models know their attention
layer and use the exact closed form (CAM) automatically; ``closed_form=False`` forces the
gradient path (a backward pass from the target scores to the layer only).

Models: attnguard ``resnet18`` (torchvision ResNet-18 with the CIFAR stem, 3x32x32) and, unless
``--no-imagenet``, a torchvision ResNet-18 with the ImageNet stem at 3x224x224 wrapped as an
attnguard model (untrained weights: speed does not depend on them).

    python benchmarks/bench_gradcam.py                 # CPU, batch 32, ~1.5 min on 2 cores
    python benchmarks/bench_gradcam.py --device cuda
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from attnguard import create_model  # noqa: E402
from attnguard.attention import grad_cam, normalize_cam, upsample_cam  # noqa: E402
from attnguard.models import IMAGENET_MEAN, IMAGENET_STD, NormalizedModel  # noqa: E402


def imagenet_resnet18() -> NormalizedModel:
    """torchvision ResNet-18 (ImageNet stem, 1000 classes) with attnguard's metadata."""
    groups = ["net.layer1", "net.layer2", "net.layer3", "net.layer4"]
    return NormalizedModel(torchvision.models.resnet18(num_classes=1000), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                           arch="resnet18-imagenet", num_classes=1000, input_size=(3, 224, 224),
                           attention_layer="net.layer4", group_layers=groups, classifier="net.fc")


def _hook_count(model: torch.nn.Module) -> int:
    """Forward / backward hooks registered on any module of ``model`` (attnguard removes its own after each call)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def bench_model(label, model, shape, args, device):
    from pytorch_grad_cam import GradCAM

    model = model.to(device).eval()
    x, _ = C.random_batch(args.batch_size, shape, model.num_classes, device, args.seed)
    size = shape[-2:]
    cuda = device.type == "cuda"
    # Each candidate gets its own copy of the model (same weights), so that no candidate's hooks run in
    # another's timed calls: pytorch-grad-cam keeps forward hooks on its model for its whole life, and on
    # CUDA they copy the activations to the host (.cpu(), a sync) on every forward.
    models = {"attnguard": model, "pytorch-grad-cam": copy.deepcopy(model)}
    if cuda:
        models["attnguard fast"] = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
    theirs_model = models["pytorch-grad-cam"]
    pgc = GradCAM(model=theirs_model, target_layers=[theirs_model.get_submodule("net.layer4")])
    model, fast_model = models["attnguard"], models.get("attnguard fast")
    hooked = {k: _hook_count(m) for k, m in models.items() if k != "pytorch-grad-cam"}
    if any(hooked.values()):  # a hook on an attnguard candidate's model would tax its timings
        raise SystemExit(f"hooks found on the attnguard candidates' models: {hooked}")
    out = {}

    def full(closed):
        def run():
            cam = grad_cam(model, "net.layer4", x, closed_form=None if closed else False)
            out[f"full-{closed}"] = upsample_cam(normalize_cam(cam), size).cpu()
        return run

    def raw(closed):
        def run():
            out[f"raw-{closed}"] = grad_cam(model, "net.layer4", x, closed_form=None if closed else False)
        return run

    def theirs():
        out["pgc"] = pgc(input_tensor=x, targets=None)

    def fast_full():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            cam = grad_cam(fast_model, "net.layer4", x_cl)
        out["full-fast"] = upsample_cam(normalize_cam(cam.float()), size).cpu()

    cands = {"pytorch-grad-cam": theirs, "attnguard closed form, full": full(True),
             "attnguard gradient path, full": full(False), "attnguard closed form, raw map": raw(True),
             "attnguard gradient path, raw map": raw(False)}
    if cuda:
        cands["attnguard closed form, full, bf16 autocast + channels_last"] = fast_full
    print(f"{label}: batch {args.batch_size}, {device}", file=sys.stderr)
    t = C.time_interleaved(cands, device, warmup=args.warmup, repeats=args.repeats)
    ref_map = torch.from_numpy(out["pgc"])
    agree = {k: (out[f"full-{k}"] - ref_map).abs().max().item() for k in (True, False)}
    # pytorch-grad-cam min-max normalizes again after resizing; doing the same to ours isolates that step
    agree["renorm"] = (normalize_cam(out["full-True"]) - ref_map).abs().max().item()
    pgc.activations_and_grads.release()
    ips = {n: args.batch_size / v.median for n, v in t.items()}
    ref = ips["pytorch-grad-cam"]
    rows = []
    for name, v in ips.items():
        what = ("GradCAM, targets=None (ReLU, normalize, resize)" if name == "pytorch-grad-cam" else
                name.replace("attnguard ", "attnguard grad_cam, "))
        rows.append([label, what, C.rate(v), C.ratio(v, ref), f"{t[name].spread:.0%}"])
    return rows, agree


def main(argv=None) -> str:
    p = C.base_parser(__doc__.splitlines()[0], cpu_batch=32, cuda_batch=32, cpu_repeats=5)
    p.add_argument("--no-imagenet", action="store_true", help="skip the 224x224 ImageNet-stem ResNet-18")
    args = p.parse_args(argv)
    device = C.finish_args(args)
    before = C.machine(device)
    rows, notes = [], []
    models = [("resnet18 CIFAR stem, 32x32", create_model("resnet18"), (3, 32, 32))]
    if not args.no_imagenet:
        models.append(("resnet18 ImageNet stem, 224x224", imagenet_resnet18(), (3, 224, 224)))
    for label, model, shape in models:
        r, agree = bench_model(label, model, shape, args, device)
        rows += r
        notes.append(f"{label}: max |attnguard full - pytorch-grad-cam| = {agree[True]:.1e} (closed form), "
                     f"{agree[False]:.1e} (gradient path), {agree['renorm']:.1e} (closed form renormalized "
                     "after upsampling)")
    tab = C.table(["model (layer net.layer4)", "method", "images/s", "vs pytorch-grad-cam", "spread"], rows)
    text = (f"Batch {args.batch_size}, untrained weights, uniform random inputs, eval mode, target = predicted "
            "class. 'full' = the same output as pytorch-grad-cam (normalized, upsampled to the input size, on "
            "the host); 'bf16 autocast + channels_last' (CUDA only) = the trainer's default precision; 'raw map' = grad_cam alone, compared with pytorch-grad-cam's full call. "
            f"Median of {args.repeats} interleaved rounds after {args.warmup} warm-up call(s). Agreement: the maps are the same; "
            "the residual comes from pytorch-grad-cam min-max normalizing a second time after cv2.resize "
            "(bilinear upsampling pulls the extremes inward), which attnguard's normalize-then-upsample does not: "
            + "; ".join(notes) + ".")
    return C.report("Grad-CAM throughput: attnguard vs pytorch-grad-cam", device, [tab, text], args, before)


if __name__ == "__main__":
    main()
