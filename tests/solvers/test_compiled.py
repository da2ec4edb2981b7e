"""``options={'compile': True}``: the compiled step gives eager's answers, compiles once, and falls back once.

The fast tests compile with dynamo's ``eager`` or ``aot_eager`` backend (tracing, guards, recompiles and
autograd through the traced graph, in seconds); one slow test compiles with inductor.
"""

from __future__ import annotations

import warnings

import pytest
import scipy.special
import torch

from odecli import odeint
from odecli.errors import ConfigError
from odecli.registry import SOLVERS
from odecli.solvers.errors import CompileFallback, InvalidInputError
from odecli.tasks.common import make_solve
from tests.solvers.conftest import adaptive_explicit_methods

ADAPTIVE_EXPLICIT = adaptive_explicit_methods()
SPIRAL_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
Y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
T = torch.linspace(0.0, 5.0, 21, dtype=torch.float64)


class Spiral(torch.nn.Module):
    """The benchmarks' spiral ``y³ A`` as a module (its matrix a buffer)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("A", SPIRAL_A.clone())

    def forward(self, t, y):
        return (y**3) @ self.A


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it is given and runs them as traced."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def solve(field, method, compile_backend=None, t=T, y0=Y0, rtol=1e-3, atol=1e-6, **extra):
    """At tolerances where every pair's error estimate is well above rounding (dopri8's at 1e-7 is not: the steps then
    differ with the rounding of the stage sums, as they would between any two correct codes), from a first step where it is too."""
    options = {"first_step": 0.05, **extra}
    if compile_backend is not None:
        options |= {"compile": True, "compile_backend": compile_backend}
    return odeint(field, y0, t, method=method, rtol=rtol, atol=atol, options=options)


@pytest.mark.parametrize("method", ADAPTIVE_EXPLICIT)
def test_compiled_step_gives_the_eager_solution(method):
    """Every adaptive explicit pair: the same solution to rounding."""
    field = Spiral()
    with torch.no_grad():
        eager = solve(field, method)
        compiled = solve(field, method, "eager")
    # Rounding differs (one addmm per stage eagerly, y + dt·K^T a compiled) and moves the step sizes by ulps, so
    # high-order pairs agree to ~1e-10 relative, not to the last bit (dopri5, bosh3: 1e-14).
    torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_gradients_flow_through_the_compiled_step(method):
    """With a graph: aot_autograd's traced forward and backward give direct backprop's gradient."""
    field, y0 = Spiral(), Y0.clone().requires_grad_()
    (eager_grad,) = torch.autograd.grad(solve(field, method, y0=y0).square().sum(), y0)
    (compiled_grad,) = torch.autograd.grad(solve(field, method, "aot_eager", y0=y0).square().sum(), y0)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-10, atol=1e-12)


def test_compiled_step_counts_the_same_evaluations():
    from odecli import track_stats

    field = Spiral()
    counts = []
    for backend in (None, "eager"):
        with torch.no_grad(), track_stats() as stats:
            solve(field, "dopri5", backend)
        counts.append((stats.nfe_forward, stats.steps_accepted, stats.steps_rejected))
    assert counts[0] == counts[1] and counts[0][0] > 20


@pytest.mark.parametrize("method, jumps", [*((name, None) for name in ADAPTIVE_EXPLICIT), ("dopri5", [0.3, 0.7])])
def test_tracked_training_solve_compiles_and_counts_as_eager(method, jumps):
    """Under track_stats with a graph (how the tasks train): compiled, no fallback, eager's NFE forward and backward
    (with jump_t too, where the slope after a jump is evaluated outside the compiled step)."""
    from odecli import track_stats

    field = Spiral()
    field.A = torch.nn.Parameter(field.A.clone())
    counts, gradients = [], []
    for backend in (None, "aot_eager"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallback)
            with track_stats() as stats:
                solve(field, method, backend, t=T[:6], **({"jump_t": jumps} if jumps else {})).square().sum().backward()
        counts.append((stats.nfe_forward, stats.nfe_backward))
        gradients.append(field.A.grad)
        field.A.grad = None
    assert counts[0] == counts[1] and counts[0][1] > 0
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-9, atol=1e-12)


def test_new_times_and_tolerances_reuse_the_compiled_step():
    """One graph per grad mode: a new time span, new tolerances, a reversed t or a new state value compile nothing."""
    field, backend = Spiral(), CountingBackend()
    with torch.no_grad():
        solve(field, "dopri5", backend)
        assert backend.graphs == 1
        solve(field, "dopri5", backend, t=torch.linspace(1.0, 9.0, 7, dtype=torch.float64))
        solve(field, "dopri5", backend, rtol=1e-4, atol=1e-6)
        solve(field, "dopri5", backend, rtol=1e-9, atol=1e-11, y0=Y0 * 0.5)
        solve(field, "dopri5", backend, t=torch.linspace(3.0, 2.0, 5, dtype=torch.float64))
    assert backend.graphs == 1
    y0 = Y0.clone().requires_grad_()
    solve(field, "dopri5", backend, y0=y0)
    solve(field, "dopri5", backend, y0=y0, rtol=1e-5, t=T * 2)
    assert backend.graphs == 2  # the graph-building solve traced once more


def branching_field(t, y):
    """A field torch.compile cannot put in one graph: a Python branch on a tensor's value."""
    if float(y.abs().sum()) > 1e6:
        return torch.zeros_like(y)
    return (y**3) @ SPIRAL_A


def scipy_field(t, y):
    """A field that calls into code dynamo cannot trace."""
    return torch.from_numpy(scipy.special.expit(y.numpy())) @ SPIRAL_A


@pytest.mark.parametrize("field", [branching_field, scipy_field], ids=["branch", "scipy"])
def test_untraceable_field_falls_back_to_eager_with_one_warning(field):
    with torch.no_grad():
        eager = solve(field, "dopri5")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = solve(field, "dopri5", "eager")
            second = solve(field, "dopri5", "eager", rtol=1e-6)
    fallbacks = [w for w in caught if issubclass(w.category, CompileFallback)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    assert "runs eagerly" in str(fallbacks[0].message)
    torch.testing.assert_close(first, eager, rtol=1e-12, atol=1e-12)  # the uncompiled step function, then
    with torch.no_grad():
        torch.testing.assert_close(solve(field, "dopri5", "eager"), eager, rtol=0, atol=0)  # the eager path itself
        assert second.shape == eager.shape


def test_an_error_of_the_field_itself_is_raised_without_a_fallback_warning():
    calls = [0]

    def failing(t, y):
        calls[0] += 1
        if calls[0] > 2:  # first evaluation, first attempt's first stage: then inside the compiled step
            raise ValueError("the field's own error")
        return (y**3) @ SPIRAL_A

    with warnings.catch_warnings(record=True) as caught, pytest.raises(ValueError, match="the field's own error"):
        warnings.simplefilter("always")
        with torch.no_grad():
            solve(failing, "dopri5", "eager")
    assert not [w for w in caught if issubclass(w.category, CompileFallback)]


@pytest.mark.parametrize(
    "options, message",
    [({"compile": "yes"}, "options\\['compile'\\] must be True or False"), ({"compile": True, "compile_backend": "fast"}, "compile_backend'\\] must be one of")],
)
def test_bad_compile_options_are_refused(options, message):
    with pytest.raises(InvalidInputError, match=message):
        odeint(Spiral(), Y0, T, options=options)


def test_independent_batch_mode_refuses_compile():
    with pytest.raises(InvalidInputError, match="compile"):
        odeint(Spiral(), Y0, T, options={"batch_mode": "independent", "compile": True})


def test_solver_config_compile_reaches_the_solver():
    """``solver.compile=true`` passes the schema and compiles the step (a graph reaches the backend set in options)."""
    backend = CountingBackend()
    base = {"method": "dopri5", "tol": 1e-7, "rtol": 1e-7, "atol": 1e-9, "compile": True, "options": {"compile_backend": backend}}
    with torch.no_grad():
        compiled = make_solve(base)(Spiral(), Y0, T)
        eager = make_solve({**base, "compile": False, "options": {}})(Spiral(), Y0, T)
    assert backend.graphs == 1
    torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-9)
    with pytest.raises(ConfigError, match="compile=true works with batch_mode=joint only"):
        make_solve({**base, "batch_mode": "independent"})


@pytest.mark.slow
def test_inductor_compiled_step_gives_the_eager_solution():
    """The real compiler (tens of seconds on a CPU): C++ code for dopri5's step, the same solution."""
    field = Spiral()
    with torch.no_grad():
        eager = solve(field, "dopri5")
        compiled = solve(field, "dopri5", "inductor")
        again = solve(field, "dopri5", "inductor", t=T * 1.5, rtol=1e-6)
    torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(again).all()


def test_list_solvers_marks_the_methods_that_compile():
    """``odecli list solvers``: ``compile`` in the kind column of exactly the adaptive explicit pairs."""
    from typer.testing import CliRunner

    from odecli.cli import app

    result = CliRunner().invoke(app, ["list", "solvers"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    kinds = {}
    for line in result.output.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 4 and cells[1] in SOLVERS:
            kinds[cells[1]] = cells[4]
    assert set(kinds) == set(SOLVERS.names())
    assert {name for name, kind in kinds.items() if "compile" in kind} == set(ADAPTIVE_EXPLICIT)


def test_adjoint_compiles_the_forward_solve_only():
    """odeint_adjoint: the forward solve compiles; the backward one (autograd.grad inside its field) stays eager, unwarned."""
    from odecli import odeint_adjoint

    field, backend = Spiral(), CountingBackend()
    y0 = Y0.clone().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            solution = odeint_adjoint(field, y0, T, rtol=1e-5, atol=1e-7, options={"compile": True, "compile_backend": backend}, adjoint_params=())
            (gradient,) = torch.autograd.grad(solution.square().sum(), y0)
    assert backend.graphs == 1
    assert not [w for w in caught if issubclass(w.category, CompileFallback)]
    (expected,) = torch.autograd.grad(odeint_adjoint(field, y0, T, rtol=1e-5, atol=1e-7, adjoint_params=()).square().sum(), y0)
    torch.testing.assert_close(gradient, expected, rtol=1e-8, atol=1e-10)
