import pytest
import torch

from xraypose.camera import Camera, carm_pose
from xraypose.errors import InputError
from xraypose.geometry import check_rigid, geodesic_rotation
from xraypose.sampling import PoseSampler
from xraypose.similarity import ncc
from xraypose.synthetic import XraySimulator


def test_diffpose_sampler_statistics(sample_ct):
    s = PoseSampler.for_volume(sample_ct, sod=620.0, scale=1.0)
    T = s.sample(4000, torch.Generator().manual_seed(0), dtype=torch.float64)
    check_rigid(T)
    # Rotations are about the isocenter: with zero translation the principal ray still hits it.
    s0 = PoseSampler(s.isocenter_pose, s.isocenter, trans_mean=(0, 0, 0), trans_std=(0, 0, 0))
    T0 = s0.sample(50, torch.Generator().manual_seed(1), dtype=torch.float64)
    w = s.isocenter - T0[:, :3, 3]
    z = T0[:, :3, 2]
    miss = (w - (w * z).sum(-1, keepdim=True) * z).norm(dim=-1)
    assert miss.max() < 1e-6
    assert (w.norm(dim=-1) - 620.0).abs().max() < 1e-6
    # Translation offsets in the camera frame have the requested mean and spread.
    delta = (torch.linalg.inv(s.isocenter_pose) @ torch.linalg.inv(_rot_about_iso(T, s)) @ T)[:, :3, 3]
    assert torch.allclose(delta.mean(0), torch.tensor(s.trans_mean, dtype=torch.float64), atol=4.0)
    assert torch.allclose(delta.std(0), torch.tensor(s.trans_std, dtype=torch.float64), rtol=0.05)
    ang = geodesic_rotation(T, s.isocenter_pose.expand_as(T))
    assert 0.2 < float(ang.median()) < 0.45


def _rot_about_iso(T, s):
    from xraypose.geometry import make_transform

    Rw = T[:, :3, :3] @ s.isocenter_pose[:3, :3].T
    return make_transform(Rw, s.isocenter - Rw @ s.isocenter)


def test_uniform_sampler_ranges(sample_ct):
    s = PoseSampler.for_volume(sample_ct, sod=620.0, distribution="uniform", rot_range=(0.1, 0.1, 0.1),
                               trans_range=(5, 5, 5))
    T = s.sample(500, torch.Generator().manual_seed(2), dtype=torch.float64)
    ang = geodesic_rotation(T, s.isocenter_pose.expand_as(T))
    assert float(ang.max()) < 0.1 * 3**0.5 + 1e-9
    with pytest.raises(InputError):
        PoseSampler(s.isocenter_pose, s.isocenter, distribution="gaussian")
    with pytest.raises(InputError):
        PoseSampler(s.isocenter_pose, s.isocenter, rot_std=(0.1, -1, 0))


def test_simulated_xray_is_realistic_but_recoverable(sample_ct):
    cam = Camera(sdd=1020.0, height=48, width=48, delx=5.0)
    T = carm_pose(10.0, 5.0, 620.0, sample_ct.get_isocenter())
    sim = XraySimulator(sample_ct, cam, collimator_px=3)
    x = sim(T, torch.Generator().manual_seed(0))
    raw = x.raw
    assert raw.shape == (1, 1, 48, 48)
    assert torch.equal(raw, raw.round()) and raw.min() >= 1 and raw.max() <= 65535
    assert raw[..., 0, :].mean() < 0.1 * raw[..., 10:-10, 10:-10].mean()  # collimator border is dark
    L = torch.log(torch.tensor(x.i0)) - torch.log(raw)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    assert 0.95 < float(ncc(L[inner], x.line_integrals[inner])) < 0.9999  # noisy, blurred, yet the same image
    again = sim(T, torch.Generator().manual_seed(0))
    assert torch.equal(again.raw, raw)
    with pytest.raises(InputError):
        XraySimulator(sample_ct, cam, collimator_px=30)
