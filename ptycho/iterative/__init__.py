"""Iterative reconstructions from other packages, run on our data as a reference.

They answer "what does a well-kept iterative solver get from the same probe, positions and
diffraction?", so that a network's reconstruction is judged against the best iterative answer
beside it. Each adaptor imports its package only when called (none is needed by the core):

* :mod:`ptycho.iterative.pty_chi`: pty-chi (``pip install 'ptycho-pinn[reference]'``).
"""
