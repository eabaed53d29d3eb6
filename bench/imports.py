"""Import cost of the command line and the car path: `driver --help`, `driver drive --help`, `from driver import
load_policy`, loading an .onnx policy.

    python bench/imports.py [--repeat 5] [--compare 1ebc480]

Each probe runs in a fresh interpreter and reports the milliseconds it took (after interpreter start-up), the
modules it imported and whether torch, zarr, onnx or the trainer were among them. ``--compare REF`` runs the
same probes, interleaved, against the code at git ref REF (its driver/, datasets/, vehicle/, sim/ laid out as
the installed package on PYTHONPATH, with the same interpreter and libraries), so the ratio comes from one run
on one machine. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "zarr", "onnx", "driver.training.trainer", "driver.datasets.store", "tensorboard", "matplotlib")

PROBE = """
import json, sys, time, io, contextlib
base = set(sys.modules)
t0 = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
{body}
ms = 1000 * (time.perf_counter() - t0)
new = [m for m in sys.modules if m not in base]
print(json.dumps({{"ms": ms, "modules": len(new), "driver": len([m for m in new if m.startswith("driver")]),
                  "heavy": [h for h in {heavy!r} if h in sys.modules]}}))
"""

PROBES = {
    "`driver --help`": """    from driver.cli import main
    try:
        main(["--help"])
    except SystemExit:
        pass""",
    "`driver drive --help`": """    from driver.cli import main
    try:
        main(["drive", "--help"])
    except SystemExit:
        pass""",
    "`from driver import load_policy`": """    from driver import load_policy""",
    "`load_policy('m.onnx', runtime='onnx')`": """    from driver import load_policy
    load_policy({model!r}, runtime="onnx", threads=1)""",
}


def layout(ref: str, dest: Path) -> Path:
    """The code at ``ref`` laid out as the installed package: driver/ with datasets, vehicle, sim inside."""
    for src, target in (("driver", "driver"), ("datasets", "driver/datasets"), ("vehicle", "driver/vehicle"),
                        ("sim", "driver/sim")):
        (dest / target).mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, src], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest / target), "--strip-components=1"], input=archive.stdout,
                       check=True)
    return dest


def probe(body: str, pythonpath: Path | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    out = subprocess.run([sys.executable, "-c", PROBE.format(body=body, heavy=HEAVY)], capture_output=True, text=True,
                         env=env, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_model(out: Path) -> Path:
    import torch

    from driver.export.onnx_export import OnnxExportConfig, export_onnx
    from driver.models import InputSpec, create_model
    from driver.training.checkpoint import UNITS, model_payload, preprocess_info, save_checkpoint

    spec = InputSpec(cameras=1, stack=1, n_modes=0, horizon=1)
    torch.manual_seed(0)
    model = create_model("squeezenet_gru", spec)
    save_checkpoint(out / "m.pt", {**model_payload(model), "preprocess": preprocess_info(spec, ("left",), ()),
                                   "units": UNITS, "config": {"channels_last": False}})
    export_onnx(str(out / "m.pt"), OnnxExportConfig(out=str(out / "m.onnx"), parity_steps=2, parity_sequences=1))
    return out / "m.onnx"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="fresh interpreters per probe (median reported)")
    ap.add_argument("--compare", default=None, metavar="REF", help="also measure the code at this git ref")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_imports_"))
    model = make_model(tmp)
    versions = {"this tree": None}
    if args.compare:
        versions[args.compare] = layout(args.compare, tmp / "ref")
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeat):
        for name, body in PROBES.items():
            for version, path in versions.items():  # interleaved: load drifts hit both alike
                results.setdefault((name, version), []).append(probe(body.format(model=str(model)), path))
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    cmd = " ".join(["python", "bench/imports.py", *sys.argv[1:]])
    print(f"\n`{cmd}` — Python {platform.python_version()}; {cpu}, {os.cpu_count()} cores, load avg "
          f"{os.getloadavg()[0]:.1f}; median of {args.repeat} fresh interpreters\n")
    print("| probe | code | ms | modules imported | of them driver's | heavy modules loaded |")
    print("|---|---|---|---|---|---|")
    for name in PROBES:
        for version in versions:
            runs = results[(name, version)]
            heavy = ", ".join(runs[0]["heavy"]) or "none"
            print(f"| {name} | {version} | {statistics.median(r['ms'] for r in runs):.0f} | "
                  f"{runs[0]['modules']} | {runs[0]['driver']} | {heavy} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
