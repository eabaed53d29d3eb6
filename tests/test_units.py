import numpy as np
import pytest
import torch

from driver.units import norm_to_permille, norm_to_run, permille_to_norm, run_to_norm


@pytest.mark.parametrize("run, norm", [(0, -1.0), (49, 0.0), (99, 1.0), (24.5, -0.5), (74, 0.5)])
def test_run_to_norm_edges(run, norm):
    assert run_to_norm(run) == pytest.approx(norm)
    assert norm_to_run(norm) == pytest.approx(run)


def test_array_and_tensor_forms_agree():
    v = np.linspace(0, 99, 199)
    n = run_to_norm(v)
    assert np.allclose(n, [run_to_norm(float(x)) for x in v])
    assert np.allclose(run_to_norm(torch.tensor(v)).numpy(), n)
    assert run_to_norm(v.astype(np.float32)).dtype == np.float32  # the clip loader's labels stay float32
    assert np.allclose(norm_to_run(n), v)


def test_permille_clamps_and_rounds():
    assert norm_to_permille(1.7) == 1000 and norm_to_permille(-3.0) == -1000
    assert norm_to_permille(0.0004) == 0
    assert list(norm_to_permille(np.array([-1.0, 0.25, 1.0]))) == [-1000, 250, 1000]
    assert permille_to_norm(-500) == -0.5
