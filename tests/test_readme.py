"""The README's usage example runs as written (with the real data and the shipped checkpoint)."""

import re
from pathlib import Path

from .conftest import requires_real_data


@requires_real_data
def test_readme_usage_example_runs(capsys):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"## Usage\n\n```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["rewards"].shape == (1024,) and namespace["terminated"].all()
    assert capsys.readouterr().out.strip()  # the example prints the step's outcome
