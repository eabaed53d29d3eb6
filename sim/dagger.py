"""`driver sim dagger`: close the loop (DAgger, Ross et al. 2011). Per round ``k`` = 1..K:

1. **drive**: the current policy drives ``tracks`` training tracks (new seeds every round, in training
   variants) in the dynamic world; the expert labels every frame and takes over per the mixing rule
   (:mod:`.dagger_collect`, β_k = ``beta`` × ``beta_decay``^(k-1));
2. **ingest**: the new lab-format runs are appended to the aggregate store ``data`` (``driver ingest``);
3. **train**: the training run resumes on the aggregate for ``epochs_per_round`` more epochs
   (``driver train --resume``: same optimiser, schedule stretched, the new runs in the training split);
4. **evaluate**: the resumed model drives held-out tracks in held-out variants (``driver sim drive``'s
   closed loop); autonomy, pace and interventions go into the round table.

Round 0 is the starting model, evaluated the same way. The training run is a copy of the starting model's
run folder (its ``config.json`` and ``last.pt``) in ``out/train``, with ``data`` set to the aggregate and its
validation runs pinned (new runs never move the validation split). Progress is saved in
``out/dagger.json`` after every step of every round, so a killed run continues where it stopped: runs
already written are kept, ingest skips runs already in the store, training resumes exactly. The table is
written to ``out/dagger_table.json`` and ``out/dagger_table.md``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import h5py

from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.store import Store
from driver.datasets.validity import ValidityRules
from driver.errors import DriverError
from driver.policy import load_policy

from .closed_loop import ClosedLoopConfig, drive_closed_loop
from .dagger_collect import DaggerWorld, MixRule, collect_run
from .dagger_config import DaggerConfig
from .policy_controller import PolicyController

log = logging.getLogger(__name__)

STATE_FILE, TABLE_JSON, TABLE_MD = "dagger.json", "dagger_table.json", "dagger_table.md"
# settings that must not change when a stopped DAgger run is continued (``rounds`` may grow)
FIXED = ("model", "data", "tracks", "seconds", "variants", "beta", "beta_decay", "takeover", "release",
         "epochs_per_round", "eval_tracks", "eval_variants", "eval_laps", "max_seconds", "fps", "seed")


class DaggerError(DriverError):
    """A DAgger run cannot go on (bad starting run, ingest failure, a different run in ``out``)."""


@dataclass
class DaggerReport:
    out: Path
    rows: list[dict]  # one per round (round 0 = the starting model)
    table: str  # markdown


# -- the saved progress ------------------------------------------------------------------------------------
def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _load_progress(config: DaggerConfig, out: Path) -> dict:
    path = out / STATE_FILE
    settings = {k: getattr(config, k) for k in FIXED}
    if not path.exists():
        return {"settings": settings, "rounds": []}
    saved = json.loads(path.read_text(encoding="utf-8"))
    changed = [k for k in FIXED if saved["settings"].get(k) != settings[k]]
    if changed:
        diff = ", ".join(f"{k} {saved['settings'].get(k)!r} -> {settings[k]!r}" for k in changed)
        raise DaggerError(f"{path}: this folder holds a DAgger run with other settings ({diff}); continue it with "
                          "the same settings (only --rounds may grow) or choose another --out")
    log.info("continuing the DAgger run in %s (%d round(s) begun)", out, len(saved["rounds"]))
    return saved


# -- round 0: the training run to resume -------------------------------------------------------------------
def _starting_run(model: str) -> Path:
    p = Path(model)
    run_dir = p if p.is_dir() else p.parent
    missing = [n for n in ("config.json", "last.pt") if not (run_dir / n).is_file()]
    if missing:
        raise DaggerError(f"{model}: DAgger resumes the training run the model came from, but {run_dir} has no "
                          f"{' or '.join(missing)} (give a checkpoint inside a driver train run folder)")
    return run_dir


def _start_training_copy(config: DaggerConfig, out: Path) -> int:
    """Copy the starting run to ``out/train`` (aggregate store, pinned validation runs); its epochs."""
    src = _starting_run(config.model)
    dst = out / "train"
    train_cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    store = Store(config.data)
    val = []
    if (src / "split.json").is_file():
        val = json.loads((src / "split.json").read_text(encoding="utf-8")).get("val", [])
    if val and set(val) <= set(store.runs):
        train_cfg["val_runs"] = val
    elif val:
        log.warning("%s: the starting run's validation runs are not all in %s; the split is redrawn each round",
                    src, config.data)
    train_cfg["data"] = store.url if store.remote else os.path.abspath(config.data)
    train_cfg["out"], train_cfg["name"] = str(out), "train"
    tmp = out / "train.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(src / "last.pt", tmp / "last.pt")
    (tmp / "config.json").write_text(json.dumps(train_cfg, indent=2), encoding="utf-8")
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return int(train_cfg["epochs"])


# -- the steps of a round ----------------------------------------------------------------------------------
def _evaluate(checkpoint: str, config: DaggerConfig) -> dict:
    policy = load_policy(checkpoint, threads=1)
    loop = ClosedLoopConfig(tracks=config.eval_tracks, split="eval", variants=config.eval_variants or None,
                            variant_split="eval", laps=config.eval_laps, fps=config.fps, height=policy.height,
                            width=policy.width, stereo=policy.stereo, max_seconds=config.max_seconds,
                            video_frames=0, seed=config.seed)
    s = drive_closed_loop(PolicyController(policy), loop).summary()
    keep = ("autonomy_pct", "pace", "interventions", "causes", "mean_speed_mps", "mean_abs_cte_m", "laps")
    return {k: s[k] for k in keep}


def _collect(config: DaggerConfig, k: int, checkpoint: str, out: Path) -> list[dict]:
    runs_dir = out / "rounds" / f"{k:02d}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    policy = load_policy(checkpoint, threads=1)
    controller = PolicyController(policy)
    rule = MixRule(beta=config.beta_at(k), takeover=config.takeover, release=config.release)
    made = []
    for i in range(config.tracks):
        track_seed = config.seed + (k - 1) * config.tracks + i
        variant = config.variants[i % len(config.variants)] if config.variants else None
        spec = DaggerWorld(track_seed, variant, f"dagger_r{k:02d}_{track_seed:05d}", config.seconds, config.fps,
                           seed=config.seed * 1000 + k)
        path = runs_dir / f"{spec.name}.h5"
        if path.exists():  # written before a kill (runs are written atomically): its counts are in the file
            with h5py.File(path, "r") as f:
                counts = json.loads(f.attrs["sim"])["counts"]
            made.append({"run": spec.name, "path": str(path), **counts})
            continue
        _, counts = collect_run(controller, spec, rule, runs_dir,
                                {"dagger_round": k, "model": checkpoint, "beta": rule.beta})
        made.append({"run": spec.name, "path": str(path), **counts})
    return made


def _ingest(config: DaggerConfig, runs: list[dict]) -> None:
    report = ingest(IngestConfig(sources=[r["path"] for r in runs], out=config.data, jobs=config.jobs,
                                 validity=ValidityRules(min_motor=0.0)))  # braking frames stay valid
    if not report.ok:
        raise DaggerError("DAgger ingest failed: " + "; ".join(o.error for o in report.failures))


def _train(config: DaggerConfig, out: Path, epochs: int) -> int:
    from driver.training import train

    result = train(resume=out / "train", overrides={"epochs": epochs, "progress": config.progress})
    return result.steps


# -- the loop ----------------------------------------------------------------------------------------------
def run_dagger(config: DaggerConfig) -> DaggerReport:
    """Run (or continue) ``config.rounds`` DAgger rounds; see the module docstring."""
    out = Path(config.out)
    if not (out / STATE_FILE).exists():  # a new run: check the starting point before writing anything
        _starting_run(config.model)
        Store(config.data)
    out.mkdir(parents=True, exist_ok=True)
    progress = _load_progress(config, out)
    rounds: list[dict] = progress["rounds"]

    def save() -> None:
        _write_json(out / STATE_FILE, progress)

    if not rounds:
        base_epochs = _start_training_copy(config, out)
        rounds.append({"round": 0, "beta": None, "model": config.model, "base_epochs": base_epochs})
        save()
    if "eval" not in rounds[0]:
        rounds[0]["eval"] = _evaluate(config.model, config)
        save()
    base_epochs = rounds[0]["base_epochs"]
    for k in range(1, config.rounds + 1):
        if len(rounds) <= k:
            rounds.append({"round": k, "beta": config.beta_at(k)})
            save()
        r = rounds[k]
        if "eval" in r:
            continue
        t0 = time.perf_counter()
        driver_ckpt = config.model if k == 1 else str(out / "rounds" / f"{k - 1:02d}" / "last.pt")
        if "runs" not in r:
            r["runs"] = _collect(config, k, driver_ckpt, out)
            save()
        if not r.get("ingested"):
            _ingest(config, r["runs"])
            r["ingested"] = True
            save()
        if "step" not in r:
            r["step"] = _train(config, out, base_epochs + k * config.epochs_per_round)
            shutil.copy2(out / "train" / "last.pt", out / "rounds" / f"{k:02d}" / "last.pt")
            r["model"] = str(out / "rounds" / f"{k:02d}" / "last.pt")
            save()
        r["eval"] = _evaluate(r["model"], config)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        save()
        log.info("DAgger round %d: autonomy %.1f%%, pace %s", k, r["eval"]["autonomy_pct"], r["eval"]["pace"])
    rows = [_row(r) for r in rounds[: config.rounds + 1]]
    table = format_dagger_table(rows, config)
    _write_json(out / TABLE_JSON, {"settings": progress["settings"], "rounds": rows})
    (out / TABLE_MD).write_text(table + "\n", encoding="utf-8")
    return DaggerReport(out, rows, table)


def _row(r: dict) -> dict:
    runs = r.get("runs", [])
    frames = sum(x.get("frames", 0) for x in runs)
    expert = sum(x.get("expert_frames", 0) for x in runs)
    e = r["eval"]
    return {"round": r["round"], "beta": r["beta"], "runs_added": len(runs), "frames_added": frames,
            "expert_share": round(expert / frames, 3) if frames else None,
            "takeovers": sum(x.get("takeovers", 0) for x in runs), "step": r.get("step"), "model": r.get("model"),
            **{k: e[k] for k in ("autonomy_pct", "pace", "interventions", "causes", "mean_speed_mps",
                                 "mean_abs_cte_m")}}


def format_dagger_table(rows: list[dict], config: DaggerConfig) -> str:
    """Markdown: one row per round (round 0 = the starting model)."""
    where = (f"{config.eval_tracks} held-out eval tracks, "
             + (f"eval variants {config.eval_variants}" if config.eval_variants else "each in its own eval variant"))
    lines = [f"DAgger rounds; closed loop on {where}, {config.eval_laps:g} lap(s) each",
             "",
             "| round | beta | runs added | expert drove | takeovers | training step | autonomy | pace | "
             "interventions | mean speed m/s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        beta = "-" if r["beta"] is None else f"{r['beta']:.3f}"
        share = "-" if r["expert_share"] is None else f"{100 * r['expert_share']:.0f}%"
        pace = "-" if r["pace"] is None else f"{r['pace']:.3f}"
        step = "-" if r["step"] is None else f"{r['step']:,}"
        lines.append(f"| {r['round']} | {beta} | {r['runs_added']} | {share} | {r['takeovers']} | {step} | "
                     f"{r['autonomy_pct']:.1f}% | {pace} | {r['interventions']} | {r['mean_speed_mps']:.2f} |")
    return "\n".join(lines)


__all__ = ["DaggerConfig", "DaggerError", "DaggerReport", "format_dagger_table", "run_dagger"]
