import numpy as np
from PIL import Image

from xraypose.report import table_html, write_report


def test_report_is_self_contained(tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(img)
    rows = [{"case": 0, "mTRE (mm)": 0.21, "ok": True}, {"case": 1, "mTRE (mm)": 3.5, "ok": False}]
    p = write_report(tmp_path / "report.html", "Demo <1>", {"success": "50 %", "median mTRE (mm)": 1.855},
                     [{"heading": "Cases", "table": table_html(rows, good=lambda r: r["ok"]),
                       "figures": [(img, "a picture"), (tmp_path / "missing.png", "skipped")]}])
    s = p.read_text()
    assert s.startswith("<!doctype html>") and "data:image/png;base64," in s
    assert "Demo &lt;1&gt;" in s and 'class="ok"' in s and 'class="bad"' in s
    assert "src=\"a.png\"" not in s and "missing.png" not in s  # nothing linked from disk
    assert "1.85" in s
