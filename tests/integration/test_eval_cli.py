"""Multi-process and remote paths: torchrun-split sampling, the service over s3:// (moto), the launchers."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from s3_utils import free_port, moto_s3  # noqa: F401
from test_eval_service import write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
# this checkout first (not an installed copy), then the helper modules
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "helpers")])}


def _run(args, env=None, **kw):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env or ENV, capture_output=True, text=True,
                          timeout=300, **kw)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path):
    ckpt = write_checkpoint(tmp_path / "run", 3)
    common = ["launchers/sample.py", "sample", "--ckpt", str(ckpt), "--num-per-class", "1", "--batch-size", "3",
              "--top-k", "50"]
    one = _run([*common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *common,
                "--out", str(tmp_path / "two"), "--npz"])
    assert two.returncode == 0, two.stderr
    a = {p.name: p.read_bytes() for p in (tmp_path / "one").glob("*.png")}
    b = {p.name: p.read_bytes() for p in (tmp_path / "two").glob("*.png")}
    assert len(a) == 10 and a == b
    import numpy as np

    assert np.load(tmp_path / "two.npz")["arr_0"].shape == (10, 64, 64, 3)


@pytest.mark.slow
def test_service_over_s3_sees_only_complete_checkpoints(tmp_path, moto_s3):  # noqa: F811
    import s3fs

    from mvar_dist.eval.service import EvalService, ServiceOptions

    endpoint, bucket = moto_s3
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    local = tmp_path / "local"
    done = write_checkpoint(local / "runA", 10)
    pending = write_checkpoint(local / "runA", 20, complete=False)
    fs.put(str(local / "runA"), f"{bucket}/runs/runA", recursive=True)
    logs = []
    svc = EvalService(ServiceOptions(roots=[f"s3://{bucket}/runs"], work_dir=str(tmp_path / "eval"),
                                     num_per_class=1, batch_size=5, top_k=50, log=logs.append))
    assert [r["checkpoint_id"] for r in svc.run_once()] == ["runA/step_00000010"]
    assert (tmp_path / "eval" / "staged" / "runA" / "step_00000010" / "model.safetensors").read_bytes() == \
        (done / "model.safetensors").read_bytes()
    assert list((tmp_path / "eval" / "tb" / "runA" / "eval").glob("events.out.tfevents.*"))
    fs.pipe(f"{bucket}/runs/runA/checkpoints/{pending.name}/COMPLETE", b"{}")
    assert [r["checkpoint_id"] for r in svc.run_once()] == ["runA/step_00000020"]
    assert svc.run_once() == []


@pytest.mark.slow
def test_launcher_errors_are_clear(tmp_path):
    bad = _run(["launchers/eval_service.py", "--roots", str(tmp_path), "--work-dir", str(tmp_path / "e"),
                "--once", "--reference", str(tmp_path / "nope.npz")])
    assert bad.returncode == 2 and "reference batch not found" in bad.stderr
    empty = _run(["launchers/sample.py", "pack", str(tmp_path), str(tmp_path / "x.npz")])
    assert empty.returncode == 2 and "no PNG files" in empty.stderr


@pytest.mark.slow
def test_service_on_two_ranks_with_kill_and_restart_equals_one_process(tmp_path):
    """torchrun 2 gloo ranks (rank 1 killed mid-sampling, then restarted) == one process: PNGs and row."""
    import numpy as np
    import torch

    from mvar_dist.eval.inception import random_state_dict
    from mvar_dist.eval.reference import write_reference
    from mvar_dist.eval.results import ResultsTable

    write_checkpoint(tmp_path / "runs" / "tiny", 3)
    weights = tmp_path / "inception.pth"
    torch.save(random_state_dict(3), weights)
    rng = np.random.default_rng(0)
    feats = {"pool": rng.standard_normal((16, 2048)), "spatial": rng.standard_normal((16, 2023))}
    write_reference(tmp_path / "ref.npz", feats, "adm", rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8))
    # 10 images; Inception batches of 3 (4 chunks: 2 per rank), sampler batches of 2 (5 batches)
    args = ["--roots", str(tmp_path / "runs"), "--once", "--no-tensorboard", "--inception-weights", str(weights),
            "--reference", str(tmp_path / "ref.npz"), "--num-per-class", "1", "--batch-size", "2", "--top-k", "50",
            "--inception-batch-size", "3", "--device", "cpu"]
    one = _run(["launchers/eval_service.py", *args, "--work-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr

    def torchrun(script, **env):
        return _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                     "--master_port", str(free_port()), script, *args, "--work-dir", str(tmp_path / "two")],
                    env={**ENV, **env})

    killed = torchrun("tests/helpers/eval_service_killed_after.py", KILL_RANK="1", KILL_AFTER="2")
    assert killed.returncode != 0
    made = sorted(p.name for p in (tmp_path / "two" / "samples").rglob("*.png"))
    assert 2 <= len(made) < 10, made  # killed in the middle: some images, no row
    assert not ResultsTable(tmp_path / "two").rows()
    again = torchrun("launchers/eval_service.py")
    assert again.returncode == 0, again.stderr
    assert "images already on disk" in again.stdout

    pngs = {name: {p.relative_to(tmp_path / name / "samples"): p.read_bytes()
                   for p in (tmp_path / name / "samples").rglob("*.png")} for name in ("one", "two")}
    assert len(pngs["one"]) == 10 and pngs["one"] == pngs["two"]
    (row1,), (row2,) = ResultsTable(tmp_path / "one").rows(), ResultsTable(tmp_path / "two").rows()
    assert row1["protocol_hash"] == row2["protocol_hash"] and row1["inception_mode"] == "adm"
    for k in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert row1[k] != "" and float(row2[k]) == pytest.approx(float(row1[k]), rel=1e-6, abs=1e-12), k


@pytest.mark.slow
def test_import_official_then_sample(tmp_path):
    """The reproduction recipe's first steps on a tiny VAR: official .pth + tokenizer -> step folder -> PNGs."""
    import torch

    from mvar_dist.config import load_config
    from mvar_dist.eval.checkpoints import verify
    from mvar_dist.runs.layout import find_checkpoints
    from mvar_dist.model import MVAR
    from mvar_dist.vqvae import MultiScaleVQVAE

    cfg = load_config("var_tiny")
    torch.save(MVAR.from_config(cfg).official_state_dict(), tmp_path / "var_tiny.pth")
    MultiScaleVQVAE.from_config(cfg.tokenizer, seed=1).save_official(tmp_path / "vae.pth")
    step = tmp_path / "released" / "var_tiny" / "checkpoints" / "step_00000000"
    imp = _run(["launchers/sample.py", "import-official", str(tmp_path / "var_tiny.pth"), str(step),
                "--config", "var_tiny", "--vae", str(tmp_path / "vae.pth")])
    assert imp.returncode == 0, imp.stderr
    assert load_config(str(step / "config.yaml")).tokenizer.checkpoint == str(tmp_path / "vae.pth")
    # a complete, verifiable step folder: what the eval service looks for
    (found,) = find_checkpoints(str(tmp_path / "released"))
    assert found.id == "var_tiny/step_00000000" and verify(step, "hash") is None
    s = _run(["launchers/sample.py", "sample", "--ckpt", str(step), "--out", str(tmp_path / "S"),
              "--num-per-class", "1", "--top-k", "50"])
    assert s.returncode == 0, s.stderr
    assert len(list((tmp_path / "S").glob("*.png"))) == cfg.model.num_classes
    wrong = _run(["launchers/sample.py", "import-official", str(tmp_path / "var_tiny.pth"), str(tmp_path / "w"),
                  "--config", "mvar_tiny", "--vae", str(tmp_path / "vae.pth")])
    assert wrong.returncode != 0 and not (tmp_path / "w" / "model.safetensors").exists()
