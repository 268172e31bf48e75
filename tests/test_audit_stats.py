"""robust_z against its closed form."""

from __future__ import annotations

import numpy as np

from vlmops.audit.stats import robust_z


def test_robust_z_closed_form() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, MAD 1
    np.testing.assert_allclose(robust_z(x), 0.6744897501960817 * (x - 3.0))


def test_robust_z_normal_sample_has_unit_scale() -> None:
    z = robust_z(np.random.default_rng(0).normal(5.0, 2.0, 200_000))
    assert abs(np.median(z)) < 0.01 and abs(np.percentile(z, 75) - 0.6745) < 0.01


def test_robust_z_constant_majority() -> None:
    z = robust_z(np.array([1.0, 1.0, 1.0, 1.0, 7.0, -2.0]))
    assert z[:4].tolist() == [0.0] * 4 and z[4] == np.inf and z[5] == -np.inf
    assert robust_z(np.array([])).size == 0
