"""TCR and the EMP-SSL loss against the paper's formula, written out per view in bench/tcr.py."""

import pytest
import torch
import torch.nn.functional as F

from bench.tcr import reference_tcr
from empssl_ray.method.loss import EMPSSLLoss, _logdet_spd, patch_invariance, total_coding_rate


@pytest.mark.parametrize("b,d", [(16, 64), (64, 16)])  # B < d uses the Gram matrix, B > d the d x d
def test_tcr_matches_spec_formula_and_gradients(b: int, d: int) -> None:
    torch.manual_seed(0)
    z1 = F.normalize(torch.randn(5, b, d, dtype=torch.float64), dim=-1).requires_grad_()
    z2 = z1.detach().clone().requires_grad_()
    ours, ref = total_coding_rate(z1, 0.2), reference_tcr(z2, 0.2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    w = torch.randn(5, dtype=torch.float64)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-5, atol=1e-10)


def test_tcr_is_finite_on_collapsed_embeddings() -> None:
    z = F.normalize(torch.ones(3, 100, 1024), dim=-1).requires_grad_()  # every row identical
    r = total_coding_rate(z, 0.2)
    r.sum().backward()
    assert z.grad is not None and torch.isfinite(r).all() and torch.isfinite(z.grad).all()
    assert r.min() > 0  # rank one: log(1 + c * B) / 2 for the single non-zero eigenvalue
    expected = torch.full((3,), 0.5 * torch.log(torch.tensor(1 + 1024 / 0.2)).item())
    torch.testing.assert_close(r, expected, rtol=1e-4, atol=0)


def test_spreading_features_lowers_the_loss() -> None:
    torch.manual_seed(0)
    loss = EMPSSLLoss(invariance_weight=0.0)
    base = F.normalize(torch.randn(1, 32, 64), dim=-1).expand(4, 32, 64)
    # Same invariance (identical views), but one batch is nearly collapsed onto a direction.
    collapsed = F.normalize(base + 5 * torch.ones(64), dim=-1)
    assert loss(base)[0] < loss(collapsed)[0]


def test_identical_patches_maximise_invariance() -> None:
    torch.manual_seed(0)
    same = F.normalize(torch.randn(1, 8, 32), dim=-1).expand(6, 8, 32)
    noisy = F.normalize(same + 0.3 * torch.randn(6, 8, 32), dim=-1)
    torch.testing.assert_close(patch_invariance(same), torch.ones(6))
    assert (patch_invariance(noisy) < 0.999).all()
    loss = EMPSSLLoss()
    _, parts_same = loss(same)
    _, parts_noisy = loss(noisy)
    assert float(parts_same["invariance"]) == pytest.approx(1.0)
    assert float(parts_noisy["invariance"]) < 1.0


def test_loss_combines_weighted_parts() -> None:
    torch.manual_seed(0)
    z = F.normalize(torch.randn(4, 10, 20), dim=-1)
    value, parts = EMPSSLLoss(invariance_weight=3.0, tcr_weight=2.0, eps=0.5)(z)
    expected = -2.0 * reference_tcr(z.double(), 0.5).mean() - 3.0 * patch_invariance(z).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert float(parts["loss"]) == pytest.approx(value.item())
    assert all(not p.requires_grad and p.dim() == 0 for p in parts.values())  # floats per report


def test_bad_eps_is_rejected() -> None:
    with pytest.raises(ValueError, match="eps"):
        EMPSSLLoss(eps=0.0)


def test_logdet_falls_back_per_view_where_cholesky_fails() -> None:
    good = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    bad = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)  # det -3: no Cholesky
    mat = torch.stack([good, bad, good]).requires_grad_()
    value = _logdet_spd(mat)
    expected = torch.stack(
        [torch.logdet(good), torch.log(torch.tensor(3.0)).double(), torch.logdet(good)]
    )
    torch.testing.assert_close(value, expected)
    value.sum().backward()
    assert mat.grad is not None
    assert torch.isfinite(mat.grad).all()  # the failed factor's NaNs stay out of the gradient
    torch.testing.assert_close(mat.grad[0], torch.linalg.inv(good).T)
    torch.testing.assert_close(mat.grad[1], torch.linalg.inv(bad).T)


def test_loss_stays_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    z = F.normalize(torch.randn(4, 16, 32), dim=-1)
    plain, _ = EMPSSLLoss()(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under, parts = EMPSSLLoss()(z)
    assert under.dtype == torch.float32 and parts["tcr"].dtype == torch.float32
    torch.testing.assert_close(under, plain)
