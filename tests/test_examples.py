"""Every example runs as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_questionnaire_example(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "questionnaire.py"), str(tmp_path / "q.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = result.stdout
    assert "t_computePsychometricScore#0  finished" in out
    assert "'model': 'Psych 01'" in out
    assert "t_importBrowserMetadata#0     abandoned" in out  # the embedded respondent
    assert out.count("t_importResponses#2") == 2
    assert "6 instances finished for respondent-web" in out
    assert "unresolved tasks: none" in out


def test_readme_quickstart_runs(tmp_path: Path) -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    )
    lines = sorted(result.stdout.splitlines())
    assert lines == [
        "t_importResponses#0 finished {'imported': ['Ada', 1]}",
        "t_importSubject#0 finished {'subjectId': 'Ada'}",
    ]
