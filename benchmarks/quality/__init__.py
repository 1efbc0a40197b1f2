"""The quality benchmark: how well reconstructions recover held-out objects (not a test).

``python -m benchmarks.quality [--quick]`` (``make quality``): for every held-out object
(random lines, a Gaussian random field, natural images), dose, gridsize and backend, SSIM,
PSNR and FRC of amplitude and phase against the truth, for the trained network (and any other
variant of ``reconstruct`` listed in ``config.VARIANTS``), the iterative reference (pty-chi,
the ceiling) and a constant image (the floor), with training and reconstruction times. See
``benchmarks/README.md`` ("Quality") and :mod:`benchmarks.quality.config` for the numbers.
Importing this package imports no framework.
"""
