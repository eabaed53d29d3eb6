"""``pytest --cpu-report N``: the N tests that cost the most CPU (this process's and its children's, setup and
teardown included), to keep the suite inside its CPU budget. Wall time (``--durations``) hides what a test's
subprocesses cost and grows with the machine's load; CPU seconds do neither as much.

Each phase's cost rides on the test's report (``user_properties``), so the list is the same whether the tests
run in this process or in pytest-xdist workers (``-n 2``), whose reports reach the process that prints it."""

from __future__ import annotations

import resource

import pytest

_PROPERTY = "cpu_seconds"  # (own, children) of one phase, in the report's user_properties
_costs: list[tuple[float, float, str]] = []  # (own CPU s, children's CPU s, test id)


def _cpu() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-report", type=int, default=0, metavar="N",
                     help="list the N tests that cost the most CPU seconds, subprocesses included (default: off)")


def _measure(item: pytest.Item):
    if not item.config.getoption("--cpu-report"):
        return (yield)
    own0, children0 = _cpu()
    try:
        return (yield)
    finally:
        own1, children1 = _cpu()
        item.user_properties.append((_PROPERTY, [own1 - own0, children1 - children0]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    return (yield from _measure(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    return (yield from _measure(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    return (yield from _measure(item))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """The teardown report carries all three phases' costs (the item's properties accumulate)."""
    if report.when != "teardown":
        return
    phases = [cost for name, cost in report.user_properties if name == _PROPERTY]
    if phases:
        _costs.append((sum(p[0] for p in phases), sum(p[1] for p in phases), report.nodeid))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    n = config.getoption("--cpu-report")
    if not n or not _costs:
        return
    total = sum(own + children for own, children, _ in _costs)
    terminalreporter.write_sep("=", f"CPU seconds: {total:.1f} in {len(_costs)} tests; the {n} costliest")
    terminalreporter.write_line(f"{'total':>7} {'own':>6} {'subproc':>7}  test")
    for own, children, nodeid in sorted(_costs, key=lambda c: -(c[0] + c[1]))[:n]:
        terminalreporter.write_line(f"{own + children:7.1f} {own:6.1f} {children:7.1f}  {nodeid}")
