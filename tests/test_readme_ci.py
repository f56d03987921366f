"""README's install and test commands are the ones CI runs (.ci/run), line for line."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _blocks(text: str) -> list[list[str]]:
    return [[line.strip() for line in b.strip().splitlines()] for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_readme_install_and_test_commands_are_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    install = next(b for b in _blocks(readme) if any(line.startswith("pip install") and "torch" in line for line in b))
    pip_lines = [line for line in install if line.startswith("pip install")]
    assert len(pip_lines) == 2 and "--index-url https://download.pytorch.org/whl/cpu" in pip_lines[0]
    for line in pip_lines:
        assert line in ci, f"README's install line is not in .ci/run: {line}"
    assert "python -m pytest tests -q" in ci
    assert any("python -m pytest tests -q" in b for b in _blocks(readme))
    assert any(line.startswith("NO_MKDOCS_2_WARNING=1 mkdocs build --strict") for line in ci)
