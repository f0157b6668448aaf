"""The README's test command is exactly what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    cmd = [l for l in ci if l.strip() and not l.startswith("#") and not l.startswith(("set ", "cd "))]
    assert len(cmd) == 1, cmd
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"```bash\n{cmd[0]}\n```" in readme
    assert "pytest" in cmd[0]


def test_readme_main_command_uses_bundled_sample():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "xraypose render sample" in readme or "xraypose demo" in readme


def test_no_unfilled_placeholders_in_docs():
    """Numbers in the README and docs are filled in, not left as markers."""
    import re

    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "«" not in text and "»" not in text, path
        for line in text.splitlines():
            assert not re.fullmatch(r"[A-Z][A-Z_]{4,}", line.strip()), (path, line)
