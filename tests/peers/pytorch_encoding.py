r"""Import the authors' PyTorch-Encoding 1.2.1 from ``build/peers/``, its compiled ops stood in for.

PyTorch-Encoding (zhanghang1989/PyTorch-Encoding) is imported unchanged from the
source that ``tests/peers/get_pytorch_encoding.py`` unpacks; nothing of it is
copied here. Two things stand in for parts that cannot run on this machine:

1. ``encoding.lib``, which JIT-compiles C++/CUDA ops when imported. Its stand-in
   provides the two forward kernels the Encoding layer calls, with the semantics
   of the reference's kernels (``X`` is ``B x N x D``, ``C`` the ``K x D``
   codewords, ``S`` the ``K`` scales, ``A`` the ``B x N x K`` assignments):

   .. math::

       \mathrm{scaled\_l2}(X, C, S)_{bik} = s_k \lVert x_i - c_k \rVert^2, \qquad
       \mathrm{aggregate}(A, X, C)_{bk} = \sum_i a_{ik} (x_i - c_k)
                                       = (A^\top X)_k - \Big(\sum_i a_{ik}\Big) c_k.

   The distances come from encnet's own :func:`encnet.nn.functional.squared_distances`.
   The reference's Encoding computes ``softmax_k(scaled_l2(X, C, scale))``, so its
   ``scale`` is minus encnet's ``smoothing``. Every other compiled op (sync BN in
   training mode, NMS, rectified conv) raises a clear error when called.
2. The ImageNet download of the backbone: ``BaseNet`` always asks for
   ``get_backbone(..., pretrained=True)``; here the backbone starts from its
   random initialisation instead.

Its ``SyncBatchNorm`` runs unchanged in eval mode (it then calls
``torch.nn.functional.batch_norm``), so models built here are used in eval mode
only. Importing the package also needs its pure-Python requirements
``portalocker`` and ``scipy`` (``pip install portalocker scipy`` in the peers
environment).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from torch import Tensor, nn

from encnet.nn.functional import squared_distances

SOURCE = Path(__file__).resolve().parents[2] / "build" / "peers" / "torch-encoding-1.2.1"
VERSION = "PyTorch-Encoding 1.2.1 (PyPI sdist torch-encoding-1.2.1.tar.gz = git tag v1.2.1)"
REQUIREMENTS = ("portalocker", "scipy")


def missing() -> str | None:
    """Why the reference cannot be imported here (None when it can)."""
    if not (SOURCE / "encoding" / "__init__.py").is_file():
        return (
            f"PyTorch-Encoding source not found in {SOURCE}; "
            "run `python tests/peers/get_pytorch_encoding.py` to fetch it"
        )
    absent = [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]
    if absent:
        return (
            f"PyTorch-Encoding needs {', '.join(absent)} to import; "
            f"run `pip install {' '.join(absent)}` in the peers environment"
        )
    return None


class _CompiledOps(types.SimpleNamespace):
    """Stand-in for ``encoding.lib.cpu`` / ``encoding.lib.gpu``: the Encoding forward kernels only."""

    @staticmethod
    def scaled_l2_forward(X: Tensor, C: Tensor, S: Tensor) -> Tensor:
        """(B, N, D), (K, D), (K,) -> (B, N, K): ``s_k ||x_i - c_k||^2``."""
        return S * squared_distances(X.transpose(1, 2), C).transpose(1, 2)

    @staticmethod
    def aggregate_forward(A: Tensor, X: Tensor, C: Tensor) -> Tensor:
        """(B, N, K), (B, N, D), (K, D) -> (B, K, D): ``sum_i a_ik (x_i - c_k)``."""
        return A.transpose(1, 2).bmm(X) - A.sum(1).unsqueeze(2) * C

    def __getattr__(self, name: str):
        raise NotImplementedError(
            f"PyTorch-Encoding's compiled op {name!r} is not available: the stand-in in "
            "tests/peers/pytorch_encoding.py provides only the Encoding forward kernels; "
            "use the reference models in eval mode"
        )


def _random_init_backbone(get_backbone):
    """Wrap ``get_backbone`` so that ``BaseNet`` never downloads ImageNet weights."""

    def get_backbone_without_download(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
        return get_backbone(name, pretrained=False, **kwargs)

    return get_backbone_without_download


def import_encoding() -> types.ModuleType:
    """Import the reference package ``encoding`` from :data:`SOURCE` with the stand-ins."""
    reason = missing()
    if reason is not None:
        raise ImportError(reason)
    if "encoding" in sys.modules:
        encoding = sys.modules["encoding"]
        if Path(encoding.__file__).resolve().parent != SOURCE / "encoding":
            raise ImportError(f"another package named 'encoding' is imported: {encoding.__file__}")
        return encoding
    lib = types.ModuleType("encoding.lib", "Stand-in for PyTorch-Encoding's compiled ops.")
    lib.cpu = lib.gpu = _CompiledOps()
    sys.modules["encoding.lib"] = lib
    sys.path.insert(0, str(SOURCE))
    try:
        import encoding
    finally:
        sys.path.remove(str(SOURCE))
    base = sys.modules["encoding.models.sseg.base"]
    base.get_backbone = _random_init_backbone(base.get_backbone)
    return encoding


def build_zoo_model(name: str) -> nn.Module:
    """The reference's model-zoo builder ``encoding.models.get_model(name, pretrained=False)``.

    ``name`` as in its model store: ``"encnet_resnet50s_ade"``, ``"resnet101s"``, ...
    This is the module whose ``state_dict()`` the published file of that name loads into.
    """
    return import_encoding().models.get_model(name, pretrained=False)


def build_encnet(dataset: str, backbone: str, **kwargs) -> nn.Module:
    """The reference's ``get_encnet(dataset, backbone, pretrained=False, **kwargs)``.

    ``dataset`` is one of its names (``"ade20k"``, ``"pcontext"``, ...): it sets the
    class count and ``lateral`` (True for names starting with "p"), as the model zoo does.
    ``EncNet`` defaults to ``aux=True, se_loss=True``.
    """
    return import_encoding().models.sseg.get_encnet(dataset, backbone, pretrained=False, **kwargs)
