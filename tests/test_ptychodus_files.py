"""ptychodus's HDF5 product and diffraction files: our reader and writer, the unit and
coordinate conversions, and (with ptychodus 1.7.0 installed) interchange with ptychodus's own
``load_product`` / ``save_product`` / ``load_diffraction_data`` / ``save_diffraction_data`` and
forward model.

Needs h5py (the ``hdf5`` extra); the interchange tests need ptychodus (the ``ptychodus``
extra). Each skips with a reason when its package is missing.
"""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py", reason="h5py not installed (pip install 'ptycho-pinn[hdf5]')")

import ptycho.io.ptychodus_files as pf  # noqa: E402
from ptycho.data import RawData  # noqa: E402
from ptycho.errors import DataError, DataWarning  # noqa: E402
from ptycho.physics import far_field_amplitude  # noqa: E402

N = 16
ENERGY_EV, DISTANCE_M, DETECTOR_PX_M = 8000.0, 0.02, 75e-6
PIXEL_M = pf.sample_pixel_size_m(ENERGY_EV, DISTANCE_M, DETECTOR_PX_M, N)


@pytest.fixture
def ptychodus_io():
    return pytest.importorskip("ptychodus.api.io",
                               reason="ptychodus not installed (pip install 'ptycho-pinn[ptychodus]')")


def random_object(shape=(48, 52), seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.5, 1, shape) * np.exp(1j * rng.uniform(-1, 1, shape))).astype(np.complex64)


def gaussian_probe() -> np.ndarray:
    r = np.arange(N) - N // 2
    return (np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 18.0)
            * np.exp(0.1j * r[None, :])).astype(np.complex64)


def scan(xs, ys) -> RawData:
    return RawData(np.ones((len(xs), N, N), np.float32), gaussian_probe(), np.asarray(xs, float),
                   np.asarray(ys, float))


def product(xs=(10.0, 20.5, 30.25, 41.0), ys=(12.0, 25.0, 33.75, 20.5),
            center_m=(1e-6, -2e-6), **kw) -> pf.PtychodusProduct:
    return pf.product_from_scan(scan(xs, ys), random_object(), pixel_size_m=PIXEL_M,
                                photon_energy_eV=ENERGY_EV, detector_distance_m=DISTANCE_M,
                                losses=[5.0, 4.0, 3.5], center_m=center_m, **kw)


def test_doctests():
    result = doctest.testmod(pf)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------------------------
# conventions


def test_positions_round_trip_through_metres():
    rng = np.random.default_rng(0)
    frame = pf.ObjectFrame(70, 50, 3e-8, 2e-8, 5e-7, -1e-6)
    x, y = rng.uniform(0, 70, 100), rng.uniform(0, 50, 100)
    for n in (16, 15):
        xm, ym = frame.to_metres(x, y, n)
        x2, y2 = frame.to_pixels(xm, ym, n)
        assert np.allclose(x2, x, rtol=0, atol=1e-9) and np.allclose(y2, y, rtol=0, atol=1e-9)


def test_object_centre_sits_half_a_pixel_before_our_patch_centre():
    """ptychodus: array centre (W-1)/2; ours: the probe's pixel N//2 sits at the position."""
    frame = pf.ObjectFrame(64, 48, 1e-8, 1e-8, 3e-7, 0.0)
    x, y = frame.to_pixels(np.array([3e-7]), np.array([0.0]), n=16)
    assert (x[0], y[0]) == (31.5 + 0.5, 23.5 + 0.5)
    x, y = frame.to_pixels(np.array([3e-7]), np.array([0.0]), n=15)
    assert (x[0], y[0]) == (31.5, 23.5)


def test_resized_frame_keeps_the_pixel_grid():
    frame = pf.ObjectFrame(40, 30, 2e-8, 3e-8, 1e-6, 2e-6)
    big = frame.resized(50, 64)
    pts = (np.array([3.0, 17.25]), np.array([4.0, 9.5]))
    for a, b in zip(frame.to_metres(*pts, 16), big.to_metres(*pts, 16)):
        assert np.allclose(a, b, rtol=0, atol=1e-18)


def test_counts_become_amplitudes_and_negative_counts_are_refused():
    c = np.array([[[0, 1, 4], [9, 16, 25], [0, 0, 100]]])
    assert np.array_equal(pf.amplitudes_from_counts(c),
                          np.sqrt(c).astype(np.float32))
    with pytest.raises(DataError, match=r"2 counts are negative \(min -3\).*negative='clip'"):
        pf.amplitudes_from_counts(c - np.array([[[3, 0, 0], [0, 0, 0], [1, 0, 0]]]))
    clipped = pf.amplitudes_from_counts(np.array([[[-3.0, 4.0]]]), negative="clip")
    assert clipped.tolist() == [[[0.0, 2.0]]]


# --------------------------------------------------------------------------------------------
# our reader and writer


def test_write_then_read_gives_the_same_product(tmp_path):
    p = product()
    pf.write_product(tmp_path / "p.h5", p)
    q = pf.read_product(tmp_path / "p.h5")
    for name in ("positions_x_m", "positions_y_m", "position_indexes", "probe", "object",
                 "loss_epochs", "loss_values", "layer_spacing_m"):
        assert np.array_equal(getattr(q, name), getattr(p, name)), name
    assert q.object.dtype == np.complex64
    assert (q.object_center_m, q.object_pixel_size_m, q.probe_pixel_size_m) == \
        (p.object_center_m, p.object_pixel_size_m, p.probe_pixel_size_m)
    assert (q.photon_energy_eV, q.detector_distance_m, q.metadata) == \
        (ENERGY_EV, DISTANCE_M, {"name": "ptycho-pinn"})


def test_raw_from_product_and_diffraction(tmp_path):
    xs, ys = (10.0, 20.5, 30.25, 41.0), (12.0, 25.0, 33.75, 20.5)
    p = product(xs, ys, position_indexes=np.array([7, 3, 5, 9]))
    rng = np.random.default_rng(2)
    counts = rng.poisson(30.0, (5, N, N)).astype(np.uint32)
    bad = np.zeros((N, N), bool)
    bad[4, 4] = bad[0, 1] = True
    d = pf.PtychodusDiffraction(counts, np.array([3, 4, 5, 7, 9]), bad, (DETECTOR_PX_M,) * 2)
    pf.write_diffraction(tmp_path / "d.h5", d)
    with pytest.warns(DataWarning, match=r"1 of 5 patterns have no probe position"):
        raw = pf.raw_from_ptychodus(p, pf.read_diffraction(tmp_path / "d.h5"))
    # patterns 3, 5, 7, 9 (index 4 has no position), each at its own position
    assert np.array_equal(raw.diffraction, np.sqrt(counts[[0, 2, 3, 4]].astype(np.float32)))
    assert np.allclose(raw.xcoords, [20.5, 30.25, 10.0, 41.0], atol=1e-9)
    assert np.allclose(raw.ycoords, [25.0, 33.75, 12.0, 20.5], atol=1e-9)
    assert np.array_equal(raw.mask, ~bad)
    assert np.array_equal(raw.probe, gaussian_probe())
    assert np.array_equal(raw.object_guess, random_object())


def test_conversion_refusals_name_the_problem():
    p = product()
    d = pf.PtychodusDiffraction(np.ones((4, N, N)), np.arange(4), np.zeros((N, N), bool),
                                (1e-4, 1e-4))
    with pytest.raises(DataError, match=r"probe pixels .* and the object pixels .* differ"):
        pf.raw_from_ptychodus(_replace(p, probe_pixel_size_m=(1e-8, 1e-8)), d)
    with pytest.raises(DataError, match=r"indexes \[1\] appear more than once"):
        pf.raw_from_ptychodus(_replace(p, position_indexes=np.array([0, 1, 1, 2])), d)
    with pytest.raises(DataError, match=r"no pattern index matches a position index"):
        pf.raw_from_ptychodus(_replace(p, position_indexes=np.arange(4) + 100), d)
    modes = np.stack([p.probe[0, 0], p.probe[0, 0] * 0.1])
    with pytest.warns(DataWarning, match=r"1 OPR x 2 incoherent probe modes; using the first"):
        raw = pf.raw_from_ptychodus(_replace(p, probe=modes), d)
    assert np.array_equal(raw.probe, p.probe[0, 0])


def _replace(p, **kw):
    import dataclasses
    return dataclasses.replace(p, **kw)


def test_reader_errors_name_the_file_and_the_dataset(tmp_path):
    with pytest.raises(DataError, match=r"expected an HDF5 file, but the path is missing"):
        pf.read_product(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match=r"text.h5.*not an HDF5 file"):
        pf.read_product(tmp_path / "text.h5")
    pf.write_product(tmp_path / "p.h5", product())
    with h5py.File(tmp_path / "p.h5", "a") as h5:
        del h5["probe_position_y_m"]
    with pytest.raises(DataError, match=r"p.h5.*missing dataset 'probe_position_y_m'"):
        pf.read_product(tmp_path / "p.h5")
    with h5py.File(tmp_path / "p.h5", "a") as h5:
        h5["probe_position_y_m"] = np.zeros(3)
    with pytest.raises(DataError, match=r"'probe_position_y_m': expected a real \(4,\) array"):
        pf.read_product(tmp_path / "p.h5")


def test_links_are_not_followed(tmp_path):
    """A file must not make the reader open another file (HDF5 external links)."""
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["object"] = random_object()
    pf.write_product(tmp_path / "p.h5", product())
    with h5py.File(tmp_path / "p.h5", "a") as h5:
        attrs = dict(h5["object"].attrs)
        del h5["object"]
        h5["object"] = h5py.ExternalLink(str(other), "/object")
    assert attrs
    with pytest.raises(DataError, match=r"'object' is a ExternalLink, not a dataset"):
        pf.read_product(tmp_path / "p.h5")


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "p.h5"
    pf.write_product(path, product())
    before = path.read_bytes()
    monkeypatch.setattr(pf, "LOSS_VALUES", "probe")   # h5py refuses a second 'probe' mid-write
    with pytest.raises(ValueError, match="name already exists"):
        pf.write_product(path, product())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5"]


# --------------------------------------------------------------------------------------------
# interchange with ptychodus 1.7.0


def test_our_product_opens_with_ptychodus_and_round_trips(tmp_path, ptychodus_io):
    """ours -> ptychodus reader -> ptychodus writer -> ours: positions and object equal."""
    p = product()
    pf.write_product(tmp_path / "ours.h5", p)
    theirs = ptychodus_io.load_product(tmp_path / "ours.h5")
    geometry = theirs.object_.get_geometry()
    assert (geometry.width_px, geometry.height_px) == (52, 48)
    assert (geometry.center_x_m, geometry.center_y_m) == p.object_center_m
    assert np.array_equal(theirs.probe_positions.get_coordinates_x_m(), p.positions_x_m)
    assert [loss.value for loss in theirs.losses] == [5.0, 4.0, 3.5]
    assert theirs.metadata.photon_energy_eV == ENERGY_EV
    ptychodus_io.save_product(tmp_path / "theirs.h5", theirs)
    q = pf.read_product(tmp_path / "theirs.h5")
    f32 = np.finfo(np.float32).eps
    assert np.allclose(q.positions_x_m, p.positions_x_m, rtol=f32, atol=0)
    assert np.allclose(q.positions_y_m, p.positions_y_m, rtol=f32, atol=0)
    assert np.allclose(q.object, p.object, rtol=f32, atol=0)
    assert np.array_equal(q.position_indexes, p.position_indexes)
    assert q.object_center_m == p.object_center_m and q.object_pixel_size_m == p.object_pixel_size_m


def test_ptychodus_written_product_reads_with_ours(tmp_path, ptychodus_io):
    from ptychodus.api.geometry import PixelGeometry
    from ptychodus.api.object import Object, ObjectCenter
    from ptychodus.api.probe import ProbeSequence
    from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
    from ptychodus.api.product import LossValue, Product, ProductMetadata

    obj = random_object((2, 40, 44))
    positions = ProbePositionSequence([ProbePosition(i, 1e-7 * i, -2e-7 * i) for i in range(6)])
    px = PixelGeometry(PIXEL_M, PIXEL_M)
    made = Product(
        metadata=ProductMetadata(name="scan 7", comments="", detector_distance_m=DISTANCE_M,
                                 photon_energy_eV=ENERGY_EV, probe_photon_count=1e8,
                                 exposure_time_s=0.1, mass_attenuation_m2_per_kg=0.0,
                                 tomography_angle_deg=30.0),
        probe_positions=positions,
        probes=ProbeSequence(np.stack([gaussian_probe(), 0.5 * gaussian_probe()]), None, px),
        object_=Object(obj, px, ObjectCenter(3e-7, 4e-7), layer_spacing_m=[1e-6]),
        losses=[LossValue(0, 2.0), LossValue(1, 1.0)])
    ptychodus_io.save_product(tmp_path / "theirs.h5", made)
    q = pf.read_product(tmp_path / "theirs.h5")
    assert np.array_equal(q.object, obj) and np.array_equal(q.layer_spacing_m, [1e-6])
    assert q.probe.shape == (1, 2, N, N)
    assert np.array_equal(q.positions_y_m, -2e-7 * np.arange(6))
    assert q.metadata["name"] == "scan 7" and q.metadata["tomography_angle_deg"] == 30.0
    assert q.loss_values.tolist() == [2.0, 1.0]
    # and what ptychodus's own mapping gives, plus our half pixel for even N
    x, _ = q.frame.to_pixels(q.positions_x_m, q.positions_y_m, N)
    assert np.allclose(x, made.object_.get_geometry().map_probe_positions_to_object_x_px(
        positions) + 0.5, rtol=0, atol=1e-9)
    # our writer reproduces it for ptychodus
    pf.write_product(tmp_path / "again.h5", q)
    again = ptychodus_io.load_product(tmp_path / "again.h5")
    assert np.array_equal(again.object_.get_array(), obj)
    assert again.metadata == made.metadata


def test_diffraction_files_both_ways(tmp_path, ptychodus_io):
    from ptychodus.api.assemble import AssembledDiffractionData

    rng = np.random.default_rng(4)
    counts = rng.poisson(5.0, (3, N, N)).astype(np.uint16)
    bad = np.zeros((N, N), bool)
    bad[1, 2] = True
    pf.write_diffraction(tmp_path / "ours.h5", pf.PtychodusDiffraction(
        counts, np.array([4, 5, 6]), bad, (DETECTOR_PX_M, DETECTOR_PX_M)))
    theirs = ptychodus_io.load_diffraction_data(tmp_path / "ours.h5")
    assert np.array_equal(theirs.get_patterns(), counts)
    assert np.array_equal(theirs.get_bad_pixels(), bad)
    assert theirs.get_pixel_geometry().width_m == DETECTOR_PX_M
    ptychodus_io.save_diffraction_data(tmp_path / "theirs.h5", AssembledDiffractionData(
        np.array([1, 2, 3]), counts, theirs.get_pixel_geometry(), bad))
    d = pf.read_diffraction(tmp_path / "theirs.h5")
    assert np.array_equal(d.patterns, counts) and np.array_equal(d.bad_pixels, bad)
    assert d.indexes.tolist() == [1, 2, 3] and d.detector_pixel_size_m == (DETECTOR_PX_M,) * 2


def test_ptychodus_forward_model_agrees_with_our_positions(tmp_path, ptychodus_io):
    """ptychodus simulates each pattern from its product; the far field of our probe times the
    object patch at our converted position is the same pattern (a one-pixel slip is not)."""
    from ptychodus.api.simulate.diffraction import generate_diffraction_data

    # integer positions: no sub-pixel shift; centre 0, where ptychodus's int() split of a
    # position lands exactly (off-centre, float rounding can give 7.99999 -> a one-pixel
    # circular probe shift in its own model)
    xs, ys = (10.0, 20.0, 30.0, 41.0), (12.0, 25.0, 33.0, 20.0)
    pf.write_product(tmp_path / "p.h5", product(xs, ys, center_m=(0.0, 0.0)))
    theirs = generate_diffraction_data(ptychodus_io.load_product(tmp_path / "p.h5"))
    q = pf.read_product(tmp_path / "p.h5")
    x, y = q.frame.to_pixels(q.positions_x_m, q.positions_y_m, N)
    obj, probe = q.object[0], q.probe[0, 0]
    for k in range(len(xs)):
        c, r = int(round(x[k])), int(round(y[k]))
        assert (c, r) == (xs[k], ys[k])
        t = theirs.get_pattern(k) / theirs.get_pattern(k).sum()
        for slip, agrees in ((0, True), (1, False)):
            patch = obj[r - N // 2 + slip:r - N // 2 + slip + N, c - N // 2:c - N // 2 + N]
            ours = far_field_amplitude(probe * patch).astype(np.float64) ** 2
            err = np.max(np.abs(ours / ours.sum() - t)) / t.max()
            assert (err < 1e-4) == agrees, (k, slip, err)
