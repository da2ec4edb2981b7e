"""A method is tested by registering it: the registry-parametrized tests pick a new one up with no edit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.solvers import extra_method

ROOT = Path(__file__).resolve().parents[2]
# What each file checks for every registered method.
REGISTRY_TESTS = {
    "tests/solvers/test_convergence.py": "order of convergence",
    "tests/solvers/test_dropin_registry.py": "torchdiffeq's behaviours (parity)",
    "tests/solvers/test_gradcheck.py": "gradcheck of direct backprop",
    "tests/solvers/test_time_gradients.py": "gradcheck w.r.t. (y0, t), adjoint against direct",
    "tests/solvers/test_properties.py": "property tests over shapes, dtypes and grids",
    "tests/solvers/test_odeint_api.py": "the odeint interface",
}


@pytest.mark.slow
def test_new_method_is_tested_by_registering_it():
    command = [sys.executable, "-m", "pytest", "-p", "tests.solvers.extra_method", "-p", "no:cacheprovider", "-q", "-rA",
               "-k", extra_method.NAME, *REGISTRY_TESTS]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.findall(r"^PASSED (\S+)", result.stdout, flags=re.MULTILINE)
    for path, what in REGISTRY_TESTS.items():
        assert any(test.startswith(path) for test in passed), f"{path} ({what}) ran no test of {extra_method.NAME}"
