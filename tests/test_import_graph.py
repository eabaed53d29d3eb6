"""Light imports: no module-level import cycle anywhere in driver, and `from driver import load_policy` pulls in
neither the trainer nor torch nor zarr (the car computer may have none of them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"driver": ROOT / "driver", "driver.datasets": ROOT / "datasets", "driver.sim": ROOT / "sim",
            "driver.vehicle": ROOT / "vehicle"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = f
    return found


def module_level_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of ours that ``name`` imports when it is imported (not inside functions, not TYPE_CHECKING)."""
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for n in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    parent = name.split(".")[: len(name.split(".")) - n.level + (path.name == "__init__.py")]
                    base = ".".join([*parent, *([n.module] if n.module else [])])
                targets = [base] + [f"{base}.{a.name}" for a in n.names]
            else:
                continue
            out.update(t for t in targets if t in known and t != name)
    return out


def test_no_module_level_import_cycles():
    known = modules()
    graph = {m: module_level_imports(m, p, known) for m, p in known.items()}
    assert len(graph) > 100 and sum(map(len, graph.values())) > 200  # the walk saw the real graph
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_load_policy_is_light():
    probe = ("import sys\nfrom driver import load_policy\n"
             "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'zarr') or "
             "m.startswith(('driver.training.trainer', 'driver.datasets.store'))))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert "HEAVY []" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
