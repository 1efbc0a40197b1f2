"""Workflows users know from the field: train, reconstruct, save and load a model.

Callable from Python with no global state; the CLI is a thin layer over these.
"""

from ptycho.workflows.cdi import run_cdi_example, save_reconstruction, write_outputs
from ptycho.workflows.inference import load_inference_bundle
from ptycho.workflows.model import PtychoModel
from ptycho.workflows.reconstruct import Reconstruction, reconstruct
from ptycho.workflows.train import BUNDLE_NAME, TrainResult, train

__all__ = ["BUNDLE_NAME", "PtychoModel", "Reconstruction", "TrainResult", "load_inference_bundle",
           "reconstruct", "run_cdi_example", "save_reconstruction", "train", "write_outputs"]
