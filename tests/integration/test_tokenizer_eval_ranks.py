"""The tokenizer evaluation service over torchrun ranks (gloo): equal to one process."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from s3_utils import free_port
from test_tokenizer_eval import REPO, image_dir, weights  # noqa: F401  (fixtures)

from mvar_dist.eval.tokenizer.results import TokenizerResultsTable
from mvar_dist.train.tokenizer.config import load_tok_config
from mvar_dist.train.tokenizer.run import fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_service_tokenizer_kind_on_two_ranks_equals_one_process(tmp_path, image_dir, weights):
    """torchrun 2 gloo ranks: each scores its share of the images, rank 0 writes a row equal to one process's."""
    tiny = ["tokenizer.ch=32", "tokenizer.ch_mult=[1,1]", "tokenizer.vocab_size=32", "tokenizer.z_channels=8",
            "tokenizer.patch_nums=[1,2,4,8]", "tokenizer.resolution=16", "data.min_side=8", "data.num_workers=0",
            "optim.global_batch=2", "log.log_every=1", f"data.root={image_dir}", "optim.max_steps=1", "ckpt.every_steps=1",
            f"out_dir={tmp_path / 'run'}"]
    fit(load_tok_config(None, tiny))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "helpers")])}
    # 7 files (one corrupt), chunks of 2: 4 chunks, 2 per rank
    args = ["launchers/eval_service.py", "--kind", "tokenizer", "--roots", str(tmp_path / "run"), "--images",
            str(image_dir), "--inception-weights", str(weights["dir"] / "inception.pth"), "--batch-size", "2",
            "--once", "--device", "cpu"]
    runs = {"one": [sys.executable, *args],
            "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(free_port()), *args]}
    rows = {}
    for name, cmd in runs.items():
        done = subprocess.run([*cmd, "--work-dir", str(tmp_path / name)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        (rows[name],) = TokenizerResultsTable(tmp_path / name).rows()
    one, two = rows["one"], rows["two"]
    assert one["protocol_hash"] == two["protocol_hash"] and (one["num_images"], one["rejected"]) == ("6", "1")
    assert one["proto_inception_mode"] == "adm"
    for k in ("psnr", "ssim", "rfid", "usage_all", "usage_s3", "ppl_s3"):
        assert one[k] != "" and float(two[k]) == pytest.approx(float(one[k]), rel=1e-6, abs=1e-12), k
