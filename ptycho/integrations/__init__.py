"""Plug-ins for other applications (the application layer: may use ``ptycho.workflows``).

:mod:`.ptychodus`: a reconstructor library for ptychodus (``pip install 'ptycho-pinn[ptychodus]'``).
Nothing here is imported by ``import ptycho``.
"""
