"""Loading a trained model for inference."""

from __future__ import annotations

from typing import Optional

from backends import get_backend
from ptycho.atomic import PathLike
from ptycho.bundle import BundleContents, read_bundle
from ptycho.config.legacy import update_legacy_dict
from ptycho.config.schema import TrainingConfig
from ptycho.workflows.model import PtychoModel


def load_inference_bundle(path: PathLike, backend: Optional[str] = None,
                          legacy_dict: Optional[dict] = None,
                          batch_size: Optional[int] = None,
                          group=None) -> tuple[PtychoModel, TrainingConfig]:
    """Load a bundle into ``backend`` (whichever backend wrote it); return ``(model, config)``.

    The bundle is verified before anything else (see :func:`ptycho.bundle.read_bundle`),
    including the memory its network takes for batches of ``batch_size`` groups (default: the
    bundle config's batch size), before any backend builds it.
    With ``legacy_dict`` (a dictionary in the older flattened-key API), it is updated from
    the bundle's config through :func:`ptycho.config.legacy.update_legacy_dict` *before* the
    model is built, the ordering older callers rely on. ``group``: a started process group of
    ``backend``; the model is then one rank of it (a reconstruction splits the scan).
    """
    return build_inference_model(read_bundle(path, batch_size=batch_size), backend, legacy_dict,
                                 group)


def build_inference_model(contents: BundleContents, backend: Optional[str] = None,
                          legacy_dict: Optional[dict] = None,
                          group=None) -> tuple[PtychoModel, TrainingConfig]:
    """The model of verified bundle ``contents`` (from :func:`ptycho.bundle.read_bundle`) built
    in ``backend``; return ``(model, config)``. For a caller that has read the bundle already
    (the checksums are not verified twice). ``group``: as for :func:`load_inference_bundle`."""
    config = contents.config
    if not isinstance(config, TrainingConfig):   # a model- or inference-config bundle
        config = TrainingConfig(model=contents.model_config)
    if legacy_dict is not None:
        update_legacy_dict(legacy_dict, config)
    impl = get_backend(backend)
    backend_model = (impl.build_model(config.model, contents.weights) if group is None
                     else impl.build_model(config.model, contents.weights, group=group))
    return PtychoModel(backend_model, config, contents.history), config
