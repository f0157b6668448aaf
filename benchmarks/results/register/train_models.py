import sys, torch
from xraypose.train import train
from xraypose.volume import load_sample_ct, read_volume
ABD = "/work/shared/data/ct/abdomen_pancreas_ct_cbct_001/Pancreas-CT-CB_001_CT.nii.gz"
budget = float(sys.argv[1])
for name, ct in [("pelvis", load_sample_ct()), ("abdomen", read_volume(ABD))]:
    cfg = {"model": {"backbone": "resnet10t"}, "camera": {"height": 48}, "optim": {"lr": 2e-3}, "augment": {"bone_multiplier": [0.3, 10.0], "bone_multiplier_log": True}, "loss": {"mode": "geodesic", "geodesic_weight": 0.0, "param_weight": 1.0}, "run": {"time_budget_s": budget, "threads": 1, "seed": 0}}
    r = train(ct, f"/tmp/reg6/models/{name}.pt", cfg, quiet=True)
    print(name, r, flush=True)
