"""Stage 8, end to end: simulate, train both backends (and the float64 reference), reconstruct.

The scan comes from :func:`ptycho.simulate.simulate_dataset`, is grouped by
:func:`ptycho.data.group_data_for_training`, and all three models start from the same
:func:`ptycho.weights.init_weights` and train with the core's driver
(:func:`ptycho.training.fit`: same batches in the same order, same learning rates) for
``Context.e2e_epochs`` epochs. Each then predicts every group's patches, which are stitched
(:class:`ptycho.stitching.Stitcher`) and scored against the ground truth
(:func:`ptycho.metrics.compare_objects` over the covered region).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ptycho.data import group_data_for_training, initial_log_intensity_scale
from ptycho.training import fit
from ptycho.weights import init_weights

from parity import reference as R
from parity.report import Check
from parity.stages import Context, check

#: Scan points of the simulated scan (a 4 x 4 jittered grid).
E2E_PATTERNS = 16


def _reconstruct(model, data, truth_shape, n):
    from ptycho.stitching import Stitcher

    patches = model.predict(data.diffraction, batch_size=8, estimate=data.estimate)
    pos = data.global_offsets[:, None, :] + data.rel_offsets.astype(np.float64)
    st = Stitcher(truth_shape, n)
    st.add(np.asarray(patches).reshape(-1, n, n), pos.reshape(-1, 2))
    return patches, st.result(), st.coverage


def _box(mask: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of the covered pixels, as the (rows, cols) slices metrics take."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        raise AssertionError("nothing was stitched (coverage is zero everywhere)")
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def stage_e2e(ctx: Context) -> list[Check]:
    """Train A, B and the reference for a few epochs from the same weights; compare all along."""
    from ptycho.metrics import compare_objects
    from ptycho.simulate import simulate_dataset

    cfg = replace(ctx.config, nepochs=ctx.e2e_epochs, early_stopping_patience=None)
    m = cfg.model
    raw, truth = simulate_dataset(E2E_PATTERNS, m.N, nphotons=cfg.nphotons, seed=ctx.seed,
                                  scan="jitter")
    data = group_data_for_training(raw, cfg)
    w0 = init_weights(m, ctx.seed, data.probe, initial_log_intensity_scale(cfg.nphotons, m.N))
    results = {}
    models = {"A": ctx.build(ctx.a, w0), "B": ctx.build(ctx.b, w0),
              "ref": R.ReferenceModel(m, w0)}
    for label, model in models.items():
        hist = fit(model, data, cfg)
        patches, obj, coverage = _reconstruct(model, data, truth.shape, m.N)
        region = _box(coverage > 0)
        results[label] = {
            "losses": {f"epoch{r.epoch}": {k: np.float64(v) for k, v in r.loss.items()}
                       for r in hist.epochs},
            "patches": patches, "object": obj,
            "metrics": compare_objects(obj, truth, region=region),
            "region": region,
        }
    a, b, ref = results["A"], results["B"], results["ref"]
    steps = cfg.nepochs * -(-len(data) // cfg.batch_size)
    out = [check(ctx, "e2e", f"losses per epoch ({cfg.nepochs} epochs, {steps} steps)",
                 "e2e.losses", a["losses"], b["losses"], ref["losses"], steps=steps),
           check(ctx, "e2e", "reconstructed patches", "e2e.patches", a["patches"], b["patches"],
                 ref["patches"], steps=steps)]
    if not (a["region"] == b["region"] == ref["region"]):
        raise AssertionError(f"the stitched objects cover different regions: {a['region']}, "
                             f"{b['region']}, reference {ref['region']}")
    rows, cols = a["region"]
    out.append(check(ctx, "e2e", "stitched object (covered box)", "e2e.object",
                     a["object"][rows, cols], b["object"][rows, cols], ref["object"][rows, cols],
                     steps=steps))
    out.append(check(ctx, "e2e", "metrics vs ground truth", "e2e.metrics",
                     a["metrics"], b["metrics"], ref["metrics"], nan="match",
                     note="NaN allowed only where all sides have it (e.g. no FRC crossing)"))
    return out
