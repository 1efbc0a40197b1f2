"""ptycho: ptychographic reconstruction with a physics-informed neural network.

The package is backend-neutral: importing it never imports TensorFlow or PyTorch.
A framework is imported only when its backend is selected (see :mod:`backends`).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
