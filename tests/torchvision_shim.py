"""Import torchvision's pure-Python code in a CPU-torch test process (pytorch-fid and torch-fidelity need it).

The torchvision wheel installed here is a CUDA build whose C ops library cannot load beside the CPU torch; its
Python code then still registers fake kernels for `torchvision::nms`/`qnms` unconditionally and fails.
Declaring those two op schemas first (for this test process only) lets the model code import; no op of theirs
is ever called.
"""
import torch

_TV_LIB = None


def import_torchvision() -> None:
    global _TV_LIB
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        if _TV_LIB is None:
            _TV_LIB = torch.library.Library("torchvision", "DEF")  # kept alive: dropping it undefines the ops
            _TV_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _TV_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
