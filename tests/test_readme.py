"""The README's Python example runs as written and does what its comment says."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # The usage example claims the analytic CP sampler recovers the oracle posterior.
    np.testing.assert_allclose(namespace["probs"], namespace["posterior"], atol=1e-3)
