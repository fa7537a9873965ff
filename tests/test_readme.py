"""The README's code examples run as written (with the real data and the shipped checkpoint)."""

import re
from pathlib import Path

from .conftest import requires_real_data

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def example(section: str) -> str:
    """The first Python block of a README section."""
    return re.search(rf"## {section}\n\n(?:.*?\n)*?```python\n(.*?)```", README, re.S).group(1)


@requires_real_data
def test_readme_usage_example_runs(capsys):
    namespace: dict = {}
    exec(compile(example("Usage"), "README.md", "exec"), namespace)
    assert namespace["rewards"].shape == (1024,) and namespace["terminated"].all()
    assert capsys.readouterr().out.strip()  # the example prints the step's outcome


@requires_real_data
def test_readme_sb3_example_trains_and_evaluates(capsys):
    namespace: dict = {}
    exec(compile(example("Stable-Baselines3"), "README.md", "exec"), namespace)
    assert namespace["model"].num_timesteps >= 2048
    assert "'accuracy':" in capsys.readouterr().out  # the evaluation's summary


@requires_real_data
def test_readme_classifier_example_classifies(capsys):
    namespace: dict = {}
    exec(compile(example("The BlockDrop agent"), "README.md", "exec"), namespace)
    logits, keep = namespace["logits"], namespace["keep"]
    assert logits.shape == (8, 10) and keep.shape == (8, 15) and 0 < keep.sum(1).min() < 15
    assert (logits.argmax(1) == namespace["labels"][:8]).float().mean() >= 0.5  # a trained classifier
    assert capsys.readouterr().out.strip()
