#!/usr/bin/env python
"""Write layout-exact DeepFluoro and Ljubljana HDF5 files made from a real CT.

    python scripts/make_fixtures.py OUT_DIR                 # small (128² DeepFluoro, 96×124 Ljubljana)
    python scripts/make_fixtures.py OUT_DIR --full          # the real 1536² DeepFluoro detector
    python scripts/make_fixtures.py OUT_DIR --ct my_ct.nii.gz --specimens 1 2 3

Same as ``xraypose datasets fixtures ...`` (``--specimens 1,2,3``).  Writes
OUT_DIR/ipcai_2020_full_res_data.h5 and OUT_DIR/ljubljana.h5 (each with a
``.truth.json`` beside it: the poses in xraypose's frame and the landmarks),
which DeepFluoroDataset / LjubljanaDataset read like the real files.
"""

import sys

from xraypose.datasets.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main(["fixtures", *sys.argv[1:]]))
