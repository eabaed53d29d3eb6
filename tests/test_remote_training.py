"""Training and replay straight from a store on S3 (torchrun ranks with DataLoader workers), with credentials from
the environment or an AWS profile that never end up in the store, the checkpoints or the logs."""

import json
import logging
import os
import pickle
import subprocess
import sys
import uuid

import pytest

from driver.cli import main
from driver.datasets.ingest import IngestConfig, ingest
from driver.datasets.object_store import ObjectLocation, StoreIOError
from driver.datasets.store import Store
from driver.datasets.synthetic import write_synthetic_runs
from driver.export.common import parity_inputs, resolve_checkpoint
from driver.training import load_checkpoint
from tests.limits import SAFETY_S

from .conftest import s3_objects
from .faultproxy import FaultProxy


def _files_under(root) -> dict[str, bytes]:
    return {os.path.join(r, f): open(os.path.join(r, f), "rb").read() for r, _, fs in os.walk(root) for f in fs}


@pytest.mark.slow
def test_ingest_torchrun_replay_from_s3_without_leaking_the_secret(s3_url, s3_endpoint, s3_bucket, tmp_path, caplog,
                                                                     monkeypatch, capsys):
    """The CLI end to end on a bucket: ingest; train with 2 torchrun ranks, each with a forkserver DataLoader
    worker reading its own runs through the node's cache; replay. Then look for the secret everywhere.
    This is also the suite's data-parallel (DDP, gloo) test: the ranks' disjoint run split, the step count and
    one RNG state per rank in the checkpoint."""
    key_id, secret = f"AKIA{uuid.uuid4().hex[:16].upper()}", f"SECRET{uuid.uuid4().hex}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "OMP_NUM_THREADS": "1",
           "DRIVER_CACHE_DIR": str(tmp_path / "cache")}
    write_synthetic_runs(tmp_path / "runs", 5, n_frames=80, height=48, width=64, seed=31)
    outputs = []
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DRIVER_CACHE_DIR"):
        monkeypatch.setenv(k, env[k])
    caplog.set_level(logging.DEBUG)  # every log line of the commands run in this process, checked for the secret

    def run(*args):  # ingest and replay in this process (the CLI's code path without a second torch import)
        assert main(["-v", *args]) == 0, caplog.text[-3000:]
        captured = capsys.readouterr()
        outputs.append(captured.out + captured.err)

    run("ingest", str(tmp_path / "runs"), "--out", s3_url)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29547",
                "-m", "driver.cli", "-v"]
    r = subprocess.run([*torchrun, "train", "--data", s3_url, "--arch", "squeezenet", "--cameras", "left", "--stack",
                        "1", "--clip-length", "2", "--horizon", "2", "--batch-size", "4", "--epochs", "1",
                        "--steps-per-epoch", "3", "--val-fraction", "0.2", "--precision", "fp32", "--num-workers", "1",
                        "--out", str(tmp_path / "train"), "--name", "s3", "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=SAFETY_S)
    outputs.append(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    split = json.loads((tmp_path / "train" / "s3" / "split.json").read_text())
    parts = split["rank_runs"]
    assert len(parts) == 2 and all(parts) and set(parts[0]).isdisjoint(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(split["train"])
    ckpt = load_checkpoint(tmp_path / "train" / "s3" / "last.pt")
    assert ckpt["dataset"]["store"] == s3_url and ckpt["training"]["step"] == 3 and len(ckpt["training"]["rng"]) == 2
    assert (tmp_path / "cache" / "index.sqlite").is_file() and os.listdir(tmp_path / "cache" / "data")  # workers
    ckpt, model = resolve_checkpoint(tmp_path / "train" / "s3" / "best.pt")  # export and int8 calibration frames
    assert parity_inputs(ckpt, model, steps=2, sequences=1)[1] == f"store {s3_url}"
    run("replay", "--model", str(tmp_path / "train" / "s3" / "best.pt"), "--data", s3_url, "--runs", "run_000",
        "--no-video", "--out", str(tmp_path / "replay"))
    report = json.loads((tmp_path / "replay" / "report.json").read_text())
    assert list(report["per_run"]) == ["run_000"] and report["config"]["data"] == s3_url
    # the secret is nowhere: not in the store, the training run, the replay, the cache, any output, any pickle
    written = {**s3_objects(s3_endpoint, s3_bucket), **_files_under(tmp_path / "train"),
               **_files_under(tmp_path / "replay"), **_files_under(tmp_path / "cache")}
    assert len(written) > 20 and not [k for k, v in written.items() if secret.encode() in v]
    assert all(secret not in text for text in outputs)
    st = Store(s3_url)
    st.frames("run_000", "left").read(0, 2)
    assert secret.encode() not in pickle.dumps(st)  # what DataLoader workers and Dask tasks receive
    assert secret not in caplog.text


def test_credentials_from_an_aws_profile(s3_url, s3_endpoint, tmp_path, monkeypatch):
    write_synthetic_runs(tmp_path / "runs", 1, n_frames=20, height=24, width=32, seed=32)
    assert ingest(IngestConfig(sources=[str(tmp_path / "runs")], out=s3_url)).ok
    (tmp_path / "credentials").write_text("[lab]\naws_access_key_id = LABKEYID\naws_secret_access_key = labsecret\n")
    (tmp_path / "config").write_text("[profile lab]\nregion = us-east-1\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "lab")
    with FaultProxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        assert Store(s3_url).runs == ["run_000"]
    assert proxy.authorizations and all("Credential=LABKEYID/" in a for a in proxy.authorizations)
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(StoreIOError, match=r"AWS credentials: The config profile \(nope\) could not be found"):
        ObjectLocation(s3_url).exists("zarr.json")
