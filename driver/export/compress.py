"""`driver compress CKPT`: Deep Compression (Han et al. 2016) of a trained controller into one ``.dcz`` file.

1. **Prune**: per-layer magnitude pruning of every weight matrix/kernel to ``density``, in
   ``prune_rounds`` rounds, each followed by fine-tuning on the checkpoint's training runs (masks held).
2. **Share weights**: 1-D k-means per layer on the kept weights, ``2**bits`` linearly initialised centroids;
   then the centroids are fine-tuned (each gets the sum of its weights' gradients; biases train too).
3. **Entropy-code**: Huffman-coded centroid indices and sparse-position gaps (:mod:`driver.export.codec`).

A killed run, started again with the same checkpoint and settings, resumes after its last finished pruning
round (:mod:`driver.export.partial`).

    result = compress_checkpoint("best.pt", CompressConfig(out="sq.dcz", density=0.3, bits=5))
    model, meta = load_compressed_model("sq.dcz")     # dense torch model; Policy uses it unchanged

Layers with fewer than ``min_prune_numel`` weights are weight-shared but not pruned (the stem conv and the
head are small and sensitive); biases and norm weights stay float32.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from driver.export.codec import SharedTensor, write_compressed
from driver.export.common import heldout_metrics, model_metadata, resolve_checkpoint
from driver.export.finetune import FinetuneConfig, finetune
from driver.export.partial import clear_partial, load_partial, resume_key, save_partial
from driver.progress import Progress
from driver.threads import apply_threads, check_threads

log = logging.getLogger(__name__)


@dataclass
class CompressConfig:
    """``layer_bits``/``layer_density`` map glob patterns of parameter names to per-layer overrides."""

    out: str = ""  # output .dcz (empty: next to the checkpoint)
    density: float = 0.35  # share of weights kept in each pruned layer
    bits: int = 5  # index bits per shared layer: 2**bits centroids
    layer_bits: dict[str, int] = field(default_factory=dict)  # per-layer bits, e.g. head=8 (glob patterns of parameter
                                                              # names)
    layer_density: dict[str, float] = field(default_factory=dict)  # per-layer density, e.g. head=0.5
    min_prune_numel: int = 4096  # layers with fewer weights are not pruned
    prune_rounds: int = 3  # pruning rounds (geometric density schedule)
    prune_steps: int = 2700  # fine-tuning steps in all, split over the rounds (docs/benchmarks.md: 900 is too few)
    centroid_steps: int = 600  # centroid fine-tuning steps
    lr: float = 5e-4  # peak learning rate of the pruning retraining
    centroid_lr: float = 1e-4  # learning rate of the centroid fine-tuning
    batch_size: int = 16  # clips per fine-tuning step
    kmeans_iters: int = 30  # k-means iterations per shared layer
    gap_bits: int = 5  # bits per run-length gap of the sparse index
    precision: str = "auto"  # fine-tuning precision: auto, fp32, bf16 or fp16
    sim_tracks: int = 0  # > 0: closed-loop autonomy before and after with sim_drive (sim-trained models)
    workdir: str = ""  # where --sim-tracks writes (empty: next to --out)
    seed: int = 0  # pruning, sampling and k-means seed
    progress: bool = False  # progress over all fine-tuning steps: a bar on a terminal, else a line every 30 s
    threads: int = 0  # compute threads (0 = auto: physical cores, 1 on a busy machine)

    def __post_init__(self) -> None:
        check_threads(self.threads)

        def check(name: str, lo: float, hi: float) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
                raise ValueError(f"{name}={value!r} must be in {lo}..{hi}")

        for name, lo, hi in [("density", 0.01, 1.0), ("bits", 1, 8), ("min_prune_numel", 0, 10**9),
                             ("prune_rounds", 1, 100), ("prune_steps", 0, 10**6), ("centroid_steps", 0, 10**6),
                             ("lr", 1e-8, 1.0), ("centroid_lr", 1e-8, 1.0), ("batch_size", 1, 4096),
                             ("kmeans_iters", 1, 1000), ("gap_bits", 1, 8), ("sim_tracks", 0, 1000),
                             ("seed", 0, 2**31 - 1)]:
            check(name, lo, hi)
        for pattern, b in self.layer_bits.items():
            if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8:
                raise ValueError(f"layer_bits[{pattern!r}]={b!r} must be an int in 1..8")
        for pattern, d in self.layer_density.items():
            if not isinstance(d, int | float) or not 0.01 <= d <= 1.0:
                raise ValueError(f"layer_density[{pattern!r}]={d!r} must be in 0.01..1")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision={self.precision!r} must be one of auto, bf16, fp32")


@dataclass
class CompressResult:
    path: str
    fp32_bytes: int
    file_bytes: int
    params: int
    density: float  # kept share over the shared (weight) tensors
    stages: dict  # held-out metrics per stage: original, pruned, shared, final
    autonomy: dict
    layers: list[dict]
    finetune: dict

    def to_dict(self) -> dict:
        return asdict(self)


def _override(name: str, table: dict, default):
    for pattern, value in table.items():
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return default


def shared_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights that get pruned and shared: every parameter with 2+ dims (conv, linear, RNN matrices)."""
    return {name: p for name, p in model.named_parameters() if p.dim() >= 2}


def magnitude_masks(params: dict[str, Tensor], densities: dict[str, float]) -> dict[str, Tensor]:
    """Per layer, keep the ``density`` share of weights with the largest magnitude (ties broken by order)."""
    masks = {}
    for name, p in params.items():
        flat = p.detach().abs().reshape(-1)
        keep = max(1, round(densities[name] * flat.numel()))
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[torch.topk(flat.float(), keep, sorted=False).indices] = True
        masks[name] = mask.reshape(p.shape)
    return masks


def kmeans_1d(values: np.ndarray, k: int, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k,) float32, assignment) of 1-D k-means with linear init over [min, max] (Han et al.)."""
    v = values.astype(np.float64)
    if v.size == 0:
        return np.zeros(k, np.float32), np.zeros(0, np.int64)
    c = np.linspace(v.min(), v.max(), k)
    for _ in range(iters):
        assign = np.searchsorted((c[1:] + c[:-1]) / 2, v)
        sums = np.bincount(assign, weights=v, minlength=k)
        counts = np.bincount(assign, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        if np.allclose(new, c, rtol=0, atol=1e-10):
            break
        c = np.sort(new)
    c = c.astype(np.float32)
    assign = np.searchsorted((c[1:] + c[:-1]) / 2, values.astype(np.float32))
    return c, assign.astype(np.int64)


class SharedWeights:
    """Centroids (trainable) + fixed indices for each shared layer; writes ``codebook[index]`` into the model."""

    def __init__(self, params: dict[str, nn.Parameter], masks: dict[str, Tensor], bits: dict[str, int],
                 iters: int) -> None:
        self.params, self.masks = params, masks
        self.centroids: dict[str, nn.Parameter] = {}
        self.index: dict[str, Tensor] = {}  # long, -1 where pruned
        for name, p in params.items():
            mask = masks[name]
            kept = p.detach().float()[mask].numpy()
            c, assign = kmeans_1d(kept, 2 ** bits[name], iters)
            index = torch.full(p.shape, -1, dtype=torch.long)
            index[mask] = torch.from_numpy(assign)
            self.centroids[name] = nn.Parameter(torch.from_numpy(c))
            self.index[name] = index
        self.write()

    @torch.no_grad()
    def write(self) -> None:
        for name, p in self.params.items():
            idx = self.index[name]
            p.copy_(torch.where(idx >= 0, self.centroids[name][idx.clamp(min=0)], torch.zeros((), dtype=p.dtype)))

    def gather_grads(self) -> None:
        """Each centroid's gradient is the sum of the gradients of the weights that share it."""
        for name, p in self.params.items():
            idx, c = self.index[name], self.centroids[name]
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            keep = idx >= 0
            c.grad = torch.zeros_like(c).index_add_(0, idx[keep], grad[keep].float())

    def tensors(self) -> dict[str, SharedTensor]:
        return {name: SharedTensor(self.centroids[name].detach().numpy().astype(np.float32).copy(),
                                   self.index[name].numpy().copy()) for name in self.params}


def _metrics(model: nn.Module, ckpt: dict, stage: str) -> dict:
    m = heldout_metrics(model, ckpt, max_clips=1024)
    if m:
        log.info("%-9s held-out steer MAE %.3f  throttle MAE %.3f  loss %.5f", stage, m["steer_mae"],
                 m["motor_mae"], m["loss"])
    return m


def _autonomy(path: str, tracks: int, out: str) -> dict:
    from driver.sim.evaluate_policy import SimDriveConfig, sim_drive

    result = sim_drive(SimDriveConfig(model=path, out=out, tracks=tracks, media=False))
    return result.summary()


def compress_checkpoint(source: str | os.PathLike | dict, config: CompressConfig) -> CompressResult:
    """Prune + retrain, share weights + fine-tune centroids, Huffman-code into ``config.out``; see module doc."""
    from pathlib import Path

    if not config.out:
        raise ValueError("out is empty: name the .dcz file to write")
    apply_threads(config.threads)
    ckpt, model = resolve_checkpoint(source)
    key = resume_key(asdict(config), model)
    partial = load_partial(config.out, key)
    stages = partial["stages"] if partial else {"original": _metrics(model, ckpt, "original")}
    params = shared_parameters(model)
    n_params = sum(p.numel() for p in model.parameters())
    densities = {n: (_override(n, config.layer_density, config.density) if p.numel() >= config.min_prune_numel
                     else 1.0) for n, p in params.items()}
    bits = {n: _override(n, config.layer_bits, config.bits) for n in params}
    tune = partial["tune"] if partial else {"prune": [], "centroids": {}}
    steps_per_round = config.prune_steps // config.prune_rounds
    masks: dict[str, Tensor] = {}
    done = 0  # pruning rounds already finished by an earlier, killed run of this same job
    if partial:
        model.load_state_dict(partial["model"])
        masks, done = partial["masks"], partial["round"]
        log.info("resuming %s after pruning round %d of %d", config.out, done, config.prune_rounds)
    total_steps = steps_per_round * config.prune_rounds + config.centroid_steps
    with Progress("compress", total_steps, done=steps_per_round * done, enabled=config.progress) as progress:
        def on_step(what: str, loss: float) -> None:
            progress.update(progress.done + 1, stage=what, loss=f"loss {loss:.4f}")

        # -- 1. iterative magnitude pruning with retraining ---------------------------------------
        for r in range(done + 1, config.prune_rounds + 1):
            round_density = {n: d ** (r / config.prune_rounds) for n, d in densities.items()}  # geometric schedule
            masks = magnitude_masks(params, round_density)
            with torch.no_grad():
                for n, p in params.items():
                    p.mul_(masks[n])

            def zero_pruned_grads(masks: dict[str, Tensor] = masks) -> None:
                for n, p in params.items():
                    if p.grad is not None:
                        p.grad.mul_(masks[n])

            def reapply_masks(masks: dict[str, Tensor] = masks) -> None:
                for n, p in params.items():
                    p.mul_(masks[n])

            ft = FinetuneConfig(steps=steps_per_round, lr=config.lr, batch_size=config.batch_size,
                                precision=config.precision, seed=config.seed + r)
            tune["prune"].append(finetune(model, ckpt, ft, model.parameters(), zero_pruned_grads, reapply_masks,
                                          what=f"prune round {r}", on_step=on_step))
            save_partial(config.out, key, r, model, masks, stages, tune)
        stages["pruned"] = _metrics(model, ckpt, "pruned")

        # -- 2. weight sharing, then centroid fine-tuning -----------------------------------------
        shared = SharedWeights(params, masks, bits, config.kmeans_iters)
        stages["shared"] = _metrics(model, ckpt, "shared")
        others = [p for n, p in model.named_parameters() if n not in params]
        ft = FinetuneConfig(steps=config.centroid_steps, lr=config.centroid_lr, batch_size=config.batch_size,
                            precision=config.precision, seed=config.seed + 1000)
        tune["centroids"] = finetune(model, ckpt, ft, [*shared.centroids.values(), *others], shared.gather_grads,
                                     shared.write, what="centroids", on_step=on_step)
    shared.write()

    # -- 3. entropy coding into one file; what is measured is what the decoder returns ---------------
    meta = model_metadata(ckpt, model)
    meta["compression"] = {k: v for k, v in asdict(config).items()
                           if k not in ("out", "workdir", "progress", "threads")}
    tensors: dict = {}
    shared_tensors = shared.tensors()
    for name, value in model.state_dict().items():
        tensors[name] = shared_tensors.get(name, value)
    written = write_compressed(config.out, meta, tensors, gap_bits=config.gap_bits)
    from driver.export.codec import load_compressed_model

    clear_partial(config.out)
    decoded, _ = load_compressed_model(config.out)
    stages["final"] = _metrics(decoded, ckpt, "final")

    layers = []
    for name, entry in written.sections.items():
        row = {"name": name, "shape": entry["shape"], "kind": entry["kind"], "bytes": entry["bytes"]}
        if entry["kind"] == "shared":
            numel = int(np.prod(entry["shape"]))
            row.update(numel=numel, density=round(entry["nnz"] / numel, 4),
                       bits=int(np.log2(entry["k"])), index_bits_per_kept=round(entry["index_bits"] /
                                                                               max(entry["nnz"], 1), 2),
                       gap_bits_per_kept=round(entry["gap_bits_used"] / max(entry["nnz"], 1), 2))
        layers.append(row)
    kept = sum(int((t.index >= 0).sum()) for t in shared_tensors.values())
    total = sum(t.index.size for t in shared_tensors.values())

    autonomy = {}
    if config.sim_tracks:
        from driver.training.checkpoint import model_payload, save_checkpoint

        work = Path(config.workdir or Path(config.out).with_suffix(".sim"))
        work.mkdir(parents=True, exist_ok=True)
        dense_ckpt = work / "decoded.pt"  # exactly the decoder's weights, for sim_drive's loader
        save_checkpoint(dense_ckpt, {**{k: v for k, v in ckpt.items() if k not in ("model", "training", "path")},
                                     **model_payload(decoded)})
        autonomy["before"] = _autonomy(str(ckpt["path"]), config.sim_tracks, str(work / "before"))
        autonomy["after"] = _autonomy(str(dense_ckpt), config.sim_tracks, str(work / "after"))
        log.info("autonomy before %.1f%%, after %.1f%%", autonomy["before"]["autonomy_pct"],
                 autonomy["after"]["autonomy_pct"])
    result = CompressResult(config.out, 4 * n_params, written.nbytes, n_params, kept / max(total, 1), stages,
                            autonomy, layers, tune)
    log.info("compressed %s: %.1f KB -> %.1f KB (%.1fx), density %.3f", config.out, result.fp32_bytes / 1e3,
             result.file_bytes / 1e3, result.fp32_bytes / result.file_bytes, result.density)
    return result


def bits_summary(layers: list[dict]) -> dict:
    """Codebook sizes and coded bits per kept weight over the shared layers; bytes of raw float32 tensors."""
    shared = [row for row in layers if row["kind"] == "shared"]
    kept = sum(round(row["density"] * row["numel"]) for row in shared)
    per_bits: dict[int, int] = {}
    for row in shared:
        per_bits[row["bits"]] = per_bits.get(row["bits"], 0) + 1

    def per_kept(key: str) -> float:
        return sum(row[key] * row["density"] * row["numel"] for row in shared) / max(kept, 1)

    return {"codebook_bits": dict(sorted(per_bits.items())),
            "index_bits_per_kept": round(per_kept("index_bits_per_kept"), 2),
            "position_bits_per_kept": round(per_kept("gap_bits_per_kept"), 2),
            "raw_bytes": sum(row["bytes"] for row in layers if row["kind"] == "raw")}


def format_compress_result(result: CompressResult, layers: bool = False) -> str:
    """Size, sparsity, bits, held-out MAE per stage and autonomy before/after; ``layers``: one line per tensor."""
    b = bits_summary(result.layers)
    codebooks = ", ".join(f"{bits}-bit x{n}" for bits, n in b["codebook_bits"].items())
    lines = [f"{result.path}: {result.fp32_bytes / 1e6:.3f} MB fp32 -> {result.file_bytes / 1e6:.3f} MB "
             f"({result.fp32_bytes / result.file_bytes:.1f}x), {result.params:,} params, "
             f"weights kept {100 * result.density:.1f}%",
             f"  bits: codebooks {codebooks or 'none'}; per kept weight {b['index_bits_per_kept']:.2f} index + "
             f"{b['position_bits_per_kept']:.2f} position bits; {b['raw_bytes'] / 1e3:.1f} KB float32 "
             f"(biases, norms)"]
    for stage, m in result.stages.items():
        if m:
            lines.append(f"  {stage:<9} held-out steer MAE {m['steer_mae']:.3f}  throttle MAE {m['motor_mae']:.3f}")
    for when, s in result.autonomy.items():
        lines.append(f"  autonomy {when}: {s['autonomy_pct']:.1f}% ({s['interventions']} interventions)")
    if layers:
        lines.append(f"  {'tensor':<40} {'shape':<18} {'kept':>6} {'bits':>4} {'idx b/w':>7} {'pos b/w':>7} "
                     f"{'bytes':>8}")
        for row in result.layers:
            shape = "x".join(map(str, row["shape"]))
            if row["kind"] == "shared":
                lines.append(f"  {row['name']:<40} {shape:<18} {100 * row['density']:>5.1f}% {row['bits']:>4} "
                             f"{row['index_bits_per_kept']:>7.2f} {row['gap_bits_per_kept']:>7.2f} {row['bytes']:>8,}")
            else:
                lines.append(f"  {row['name']:<40} {shape:<18} {'fp32':>6} {'':>4} {'':>7} {'':>7} {row['bytes']:>8,}")
    return "\n".join(lines)
