"""``pytest --cpu-report N``: the N tests that cost the most CPU (this process's and its children's, setup and
teardown included), to keep the suite inside its CPU budget. Wall time (``--durations``) hides what a test's
subprocesses cost and grows with the machine's load; CPU seconds do neither as much."""

from __future__ import annotations

import resource

import pytest

_costs: list[tuple[float, float, str]] = []  # (own CPU s, children's CPU s, test id)


def _cpu() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-report", type=int, default=0, metavar="N",
                     help="list the N tests that cost the most CPU seconds, subprocesses included (default: off)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    if not item.config.getoption("--cpu-report"):
        return (yield)
    own0, children0 = _cpu()
    try:
        return (yield)
    finally:
        own1, children1 = _cpu()
        _costs.append((own1 - own0, children1 - children0, item.nodeid))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    n = config.getoption("--cpu-report")
    if not n or not _costs:
        return
    total = sum(own + children for own, children, _ in _costs)
    terminalreporter.write_sep("=", f"CPU seconds: {total:.1f} in {len(_costs)} tests; the {n} costliest")
    terminalreporter.write_line(f"{'total':>7} {'own':>6} {'subproc':>7}  test")
    for own, children, nodeid in sorted(_costs, key=lambda c: -(c[0] + c[1]))[:n]:
        terminalreporter.write_line(f"{own + children:7.1f} {own:6.1f} {children:7.1f}  {nodeid}")
