"""Deep Compression: Huffman and gap coding, the .dcz format's exact round trip, the pipeline, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driver.export import (
    CompressConfig,
    CompressedFileError,
    compress_checkpoint,
    huffman,
    load_step_model,
    read_compressed,
)
from driver.export.codec import SharedTensor, gap_symbols, positions_from_gaps, write_compressed
from driver.policy import Policy
from tests.limits import SAFETY_S
from tests.test_export import store48 as store48  # noqa: F401 - a fixture, used by name
from tests.test_export import tiny_checkpoint


@pytest.mark.parametrize("alphabet,n", [(2, 1), (4, 5), (32, 5000), (256, 3000)])
def test_huffman_round_trip(alphabet, n):
    rng = np.random.default_rng(alphabet)
    symbols = np.minimum(rng.geometric(0.4, n) - 1, alphabet - 1)
    lengths, data, n_bits = huffman.encode(symbols, alphabet)
    assert lengths.max() <= huffman.MAX_LEN
    assert np.array_equal(huffman.decode(lengths, data, n_bits, n), symbols)
    assert n_bits <= huffman.entropy_bits(symbols, alphabet) + n  # Huffman is within 1 bit/symbol of entropy


def test_huffman_rejects_truncated_stream():
    lengths, data, n_bits = huffman.encode(np.arange(64) % 7, 8)
    with pytest.raises(huffman.HuffmanError):
        huffman.decode(lengths, data[:2], n_bits, 64)


def test_gap_coding_with_escapes():
    positions = np.array([0, 1, 5, 40, 41, 200, 1000])
    symbols = gap_symbols(positions, escape=31)
    assert symbols.max() <= 31 and (symbols == 31).sum() > 0
    assert np.array_equal(positions_from_gaps(symbols, 31), positions)


def test_file_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    index = rng.integers(-1, 16, (8, 4, 3, 3))  # -1 = pruned
    index[0, 0] = -1  # a long pruned run
    shared = SharedTensor(rng.normal(size=16).astype(np.float32), index)
    dense_all = SharedTensor(rng.normal(size=4).astype(np.float32), rng.integers(0, 4, (5, 7)))
    bias = torch.randn(8)
    written = write_compressed(tmp_path / "m.dcz", {"arch": "x"}, {"w": shared, "d": dense_all, "b": bias})
    back = read_compressed(tmp_path / "m.dcz")
    assert back.nbytes == written.nbytes == (tmp_path / "m.dcz").stat().st_size
    w = back.tensors["w"]
    assert np.array_equal(w.index, index) and np.array_equal(w.codebook, shared.codebook)
    dense = back.state_dict()["w"].numpy()
    expected = np.where(index >= 0, shared.codebook[np.maximum(index, 0)], 0.0)
    assert np.array_equal(dense, expected.astype(np.float32))
    assert np.array_equal(back.state_dict()["d"].numpy(), dense_all.codebook[dense_all.index])
    assert torch.equal(back.tensors["b"], bias)
    assert back.sections["d"]["gap_symbols"] == 0  # a layer kept whole codes no positions


def test_compress_pipeline_on_a_tiny_model(tmp_path, store48):
    ckpt = tiny_checkpoint("squeezenet", cameras=("left", "right"), store=store48)
    out = tmp_path / "sq.dcz"
    config = CompressConfig(out=str(out), density=0.25, bits=4, layer_bits={"classifier.*": 6}, min_prune_numel=256,
                            prune_rounds=2, prune_steps=4, centroid_steps=2, batch_size=4, precision="fp32",
                            progress=True)
    result = compress_checkpoint(ckpt, config)
    assert result.file_bytes == out.stat().st_size < result.fp32_bytes / 4
    assert set(result.stages) == {"original", "pruned", "shared", "final"}
    assert all("steer_mae" in m for m in result.stages.values())
    cm = read_compressed(out)
    model, meta = load_step_model(out)
    state = model.state_dict()
    for name, t in cm.tensors.items():
        if isinstance(t, SharedTensor):  # the decoder's promise: centroid[index], zero where pruned
            assert len(t.codebook) == (64 if name.startswith("classifier") else 16)
            expected = np.where(t.index >= 0, t.codebook[np.maximum(t.index, 0)], 0.0).astype(np.float32)
            assert np.array_equal(state[name].numpy(), expected)
            if t.index.size >= 256:
                assert abs(t.density - 0.25) < 0.01
    policy = Policy(model, meta)
    frame = np.zeros((48, 64, 3), np.uint8)
    assert np.isfinite(policy.act(frame, frame, "direct").steer_norm)


def test_compress_a_recurrent_model(tmp_path, store48):
    ckpt = tiny_checkpoint("squeezenet_lstm", store=store48)
    ckpt["config"]["clip_length"] = 3  # fine-tuning sees real clips through the LSTM
    out = tmp_path / "lstm.dcz"
    config = CompressConfig(out=str(out), density=0.5, bits=4, min_prune_numel=256, prune_rounds=1, prune_steps=2,
                            centroid_steps=2, batch_size=2, precision="fp32")
    result = compress_checkpoint(ckpt, config)
    cm = read_compressed(out)
    rnn = {n: t for n, t in cm.tensors.items() if ".weight_hh_" in n or ".weight_ih_" in n}
    assert len(rnn) == 4 and all(isinstance(t, SharedTensor) for t in rnn.values())  # 2 layers x (ih, hh)
    assert all(abs(t.density - 0.5) < 0.01 for t in rnn.values() if t.index.size >= 256)
    model, meta = load_step_model(out)
    policy = Policy(model, meta)
    frame = np.full((48, 64, 3), 90, np.uint8)
    steers = [policy.act(frame, None, "direct").steer_norm for _ in range(3)]  # state carried between steps
    assert np.all(np.isfinite(steers)) and result.stages["final"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic"])
def test_bad_compressed_file_names_the_file(damage, tmp_path):
    path = tmp_path / "bad.dcz"
    write_compressed(path, {"arch": "x"}, {"w": SharedTensor(np.ones(4, np.float32), np.zeros((3, 3), np.int64))})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-7]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data[:4] = b"NOPE"
    path.write_bytes(bytes(data))
    with pytest.raises(CompressedFileError, match="bad.dcz"):
        read_compressed(path)


def test_compress_command_reports_size_sparsity_bits_and_mae(tmp_path, store48, caplog, capsys):
    from driver.cli import main
    from driver.training.checkpoint import save_checkpoint

    ckpt_path = tmp_path / "sq" / "best.pt"
    ckpt_path.parent.mkdir()
    save_checkpoint(ckpt_path, tiny_checkpoint("squeezenet", cameras=("left", "right"), store=store48))
    assert main(["compress", str(ckpt_path), "--density", "0.3", "--bits", "4", "--layer-bits", "classifier.*=6",
                 "--prune-rounds", "1", "--prune-steps", "2", "--centroid-steps", "2", "--layers",
                 "--report", str(tmp_path / "report.json")]) == 0, caplog.text[-3000:]
    out = capsys.readouterr().out
    assert f"{ckpt_path.with_suffix('.dcz')}: " in out and "MB fp32 ->" in out and "weights kept" in out
    assert "codebooks 4-bit x" in out and "6-bit x1" in out and "index +" in out and "position bits" in out
    for stage in ("original", "pruned", "shared", "final"):
        assert f"  {stage:<9} held-out steer MAE " in out
    assert "classifier" in out.split("tensor")[-1]  # the per-layer table
    report = __import__("json").loads((tmp_path / "report.json").read_text())
    assert report["file_bytes"] == ckpt_path.with_suffix(".dcz").stat().st_size
    assert set(report["stages"]) == {"original", "pruned", "shared", "final"}
    assert main(["compress", str(ckpt_path), "--density", "2"]) == 2  # the exit code
    assert "density=2.0 must be in 0.01..1.0" in caplog.text


@pytest.mark.slow
def test_killed_compress_resumes_to_the_same_file(tmp_path, store48):
    """SIGKILL after a pruning round; the same job run again resumes there and writes the uninterrupted file."""
    import signal
    import subprocess
    import sys
    import time

    from driver.export.partial import load_partial, partial_path
    from driver.training.checkpoint import save_checkpoint

    ckpt_path = tmp_path / "ck.pt"
    save_checkpoint(ckpt_path, tiny_checkpoint("squeezenet", cameras=("left", "right"), store=store48))
    settings = {"density": 0.25, "bits": 4, "min_prune_numel": 256, "prune_rounds": 3, "prune_steps": 120,
                "centroid_steps": 4, "batch_size": 4, "precision": "fp32"}
    reference = compress_checkpoint(str(ckpt_path), CompressConfig(out=str(tmp_path / "ref.dcz"), **settings))

    out = tmp_path / "killed.dcz"
    code = ("import torch; torch.set_num_threads(1)\n"
            "from driver.export import CompressConfig, compress_checkpoint\n"
            f"compress_checkpoint({str(ckpt_path)!r}, CompressConfig(out={str(out)!r}, **{settings!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + SAFETY_S
    while not partial_path(out).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=SAFETY_S)
    assert proc.returncode == -signal.SIGKILL and partial_path(out).exists() and not out.exists()
    saved = torch.load(partial_path(out), weights_only=True)
    assert 1 <= saved["round"] < 3
    assert load_partial(out, "another job") is None  # other settings or weights: start over

    resumed = compress_checkpoint(str(ckpt_path), CompressConfig(out=str(out), **settings))
    assert len(resumed.finetune["prune"]) == 3
    assert out.read_bytes() == (tmp_path / "ref.dcz").read_bytes()  # the same file, bit for bit
    assert resumed.stages == reference.stages
    assert not partial_path(out).exists()


def test_unreadable_partial_state_starts_over(tmp_path, store48):
    from driver.export.partial import partial_path

    out = tmp_path / "m.dcz"
    partial_path(out).write_bytes(b"not a torch file")
    config = CompressConfig(out=str(out), density=0.5, bits=3, min_prune_numel=256, prune_rounds=1, prune_steps=1,
                            centroid_steps=1, batch_size=2, precision="fp32")
    compress_checkpoint(tiny_checkpoint("squeezenet", store=store48), config)
    assert read_compressed(out).meta["arch"] == "squeezenet" and not partial_path(out).exists()
