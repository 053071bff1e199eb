"""Every command shown in README.md and docs/*.md runs here in a cheap form, or names the test that runs it.

The commands are extracted from the documents themselves: each line of a ```bash block, and each inline
code span that starts with a program a user would type (python, make, deepspeed, torchrun, ray, ...).
`COVERED` maps a command to the cheap forms this file executes (`--help`, `plan`/`--dry-run`, `make -n`,
a tiny config); `ELSEWHERE` maps a command to the test (or CI file) that runs it for real and says why.
A command added to a document without an entry in either fails `test_every_documented_command_is_mapped`;
an entry whose command left the documents fails `test_no_stale_entries`.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from doc_commands import (DOCS, REPO, REPO_PATH, SCRIPT, Cheap, config, documented, extract_commands, make_env,
                          make_n, py, run_alone, run_batch, tool)

# --- cheap forms shared by several commands ---------------------------------------------------------
TRAIN_HELP = py("launchers/train.py", "--help", expect=("--ds_config", "--resume"))
PRETOK_HELP = py("launchers/pretokenize.py", "--help", expect=("--verify", "--num-actors", "--source"))
PRETOK_HELP_ELSEWHERE = py(str(REPO / "launchers" / "pretokenize.py"), "--help", expect="--verify", cwd="tmp")
DEEPSPEED_HELP = tool("deepspeed", "--help", expect=("--num_gpus", "--hostfile", "--num_nodes"))
TORCHRUN_HELP = tool("torchrun", "--help", expect="--nproc_per_node", slow=True)
RAY_SUBMIT_HELP = tool("ray", "job", "submit", "--help", expect="--address")
TOK_TRAIN_HELP = py("launchers/train_tokenizer.py", "--help", expect=("dotted overrides", "--resume", "--config"))
TOK_EVAL_HELP = py("launchers/eval_tokenizer.py", "--help",
                   expect=("--checkpoint", "--images", "--lpips-vgg", "--inception-weights", "--results", "--watch"))
TOK_EVAL_SERVICE_HELP = py("launchers/eval_service.py", "--help", expect=("--kind", "--images", "--lpips-vgg"),
                           slow=True)
TORCH_DIST_RUN_HELP = py("-m", "torch.distributed.run", "--help", expect="--nproc_per_node", slow=True)
SAMPLE_HELP = py("launchers/sample.py", "--help", expect=("sample", "pack", "reference", "metrics"), slow=True)
EVAL_HELP = py("launchers/eval_service.py", "--help", expect=("--roots", "--once", "--fetch-inception"), slow=True)
SWEEP_RUN_HELP = py("launchers/scaling_sweep.py", "run", "--help", expect=("--ray", "--wait", "--dry-run"))
CPU_DEMO_PLAN = py("launchers/scaling_sweep.py", "run", "cpu_demo", "--dry-run", expect="sweep cpu_demo: 6 runs",
                   slow=True)
DEMO_DRY = py("launchers/demo.py", "--dry-run", expect="[demo] dry run")
DEMO_HELP = py("launchers/demo.py", "--help", expect=("--dry-run", "--until", "--tok"))
FD_DEMO_HELP = py("-m", "mvar_dist", "fd-demo", "--help", expect=("--eval-dir", "--judge", "--per-class"))
DOCTOR = py("-m", "mvar_dist", "doctor", expect="torch", slow=True)
MAKE_DEMO = make_n("demo", expect="launchers/demo.py")
MAKE_TEST = make_n("test", expect="-m pytest tests")
MAKE_TEST_FAST = make_n("test-fast", expect='-m "not slow"')
DOC_TEST_TARGETS = ("tests/unit/test_loader.py", "tests/integration/test_loader_mp.py",
                    "tests/integration/test_loader_workers.py", "tests/unit/test_config.py",
                    "tests/unit/test_config.py::test_yaml_round_trip", "tests/unit/test_scaling.py",
                    "tests/integration/test_scaling_runner.py", "tests/integration/test_scaling_ray.py",
                    "tests/unit/test_ssd.py", "tests/unit/test_causal_conv.py", "tests/unit/test_tokenizer.py",
                    "tests/unit/test_tokenizer_units.py", "tests/unit/test_codebook_op.py")
PYTEST_COLLECT = py("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *DOC_TEST_TARGETS,
                    expect=tuple(t if "::" in t else f"{t}::" for t in DOC_TEST_TARGETS), slow=True)
MAKE_VENV_GPU = "make venv TORCH_SPEC=torch==2.14.1"
MAKE_VENV_INDEX = MAKE_VENV_GPU + " TORCH_INDEX=https://download.pytorch.org/whl/cu128"

MN_ARGS = ("launchers/train.py --config mvar_d30 --ds_config configs/zero3.json data.shards=s3://bucket/tok256"
           " ckpt.dir=/shared/runs/d30/checkpoints out_dir=/shared/runs/d30")
MN_DS = "deepspeed --hostfile hosts --master_addr node1 --master_port 29500 " + MN_ARGS
MN_DS_NO_SSH = ("deepspeed --hostfile hosts --no_ssh --node_rank $NODE_RANK --master_addr node1 --master_port 29500 "
                + MN_ARGS)
MN_TORCHRUN_C10D = ("torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node1:29500"
                    " --rdzv-id d30-run1 " + MN_ARGS)
MN_TORCHRUN_STATIC = ("torchrun --nnodes 4 --node_rank $NODE_RANK --nproc-per-node 8 --master_addr node1"
                      " --master_port 29500 " + MN_ARGS)
MN_SRUN = "srun --kill-on-bad-exit=1 bash launchers/slurm_env.sh python " + MN_ARGS
MN_DEEPSPEED_HELP = tool("deepspeed", "--help", expect=("--hostfile", "--no_ssh", "--node_rank", "--master_addr",
                                                        "--master_port"))
MN_TORCHRUN_HELP = tool("torchrun", "--help", expect=("--nnodes", "--node_rank", "--nproc-per-node", "--rdzv-backend",
                                                      "--rdzv-endpoint", "--rdzv-id", "--master_addr"))
MN_CONFIG = config("mvar_d30", "data.shards=s3://bucket/tok256", "ckpt.dir=/shared/runs/d30/checkpoints",
                   "out_dir=/shared/runs/d30", expect="dir: /shared/runs/d30/checkpoints")

EVAL_MODE_HELP = py("launchers/eval_service.py", "--help", expect=("--inception-mode", "--inception-batch-size"),
                    slow=True)
IMPORT_HELP = py("launchers/sample.py", "import-official", "--help", expect=("--config", "--vae"), slow=True)
EVAL_TORCHRUN = ("torchrun --nproc_per_node 8 launchers/eval_service.py --roots runs/ --work-dir eval/ --once"
                 " --inception-weights pt_inception-2015-12-05-6726825d.pth --reference VIRTUAL_imagenet256_labeled.npz")
EVAL_TORCHRUN_N = "torchrun --nproc_per_node N launchers/eval_service.py ..."
RELEASED_EVAL = ("torchrun --nproc_per_node 8 launchers/eval_service.py --roots released --work-dir eval_released"
                 " --once --config var_d16 --inception-weights pt_inception-2015-12-05-6726825d.pth"
                 " --reference VIRTUAL_imagenet256_labeled.npz")
IMPORT_VAR = ("python launchers/sample.py import-official var_d16.pth released/var_d16/checkpoints/step_00000000"
              " --config var_d16 --vae vae_ch160v4096z32.pth")
IMPORT_MVAR = ("python launchers/sample.py import-official d16.pth released/mvar_d16/checkpoints/step_00000000"
               " --config mvar_d16 --vae vae_ch160v4096z32.pth")

COVERED: Dict[str, Tuple[Cheap, ...]] = {
    # README / quickstart / development: make targets (the recipes are printed, their scripts must exist)
    "make demo": (MAKE_DEMO, DEMO_DRY, DEMO_HELP),
    "make test": (MAKE_TEST,),
    "make test-fast": (MAKE_TEST_FAST,),
    "make sweep-demo": (make_n("sweep-demo", expect=("launchers/demo.py --until shards", "scaling_sweep.py run")),
                        CPU_DEMO_PLAN),
    "make venv": (make_n("-B", "venv", expect=("pip install", "install_lock.py")),),
    MAKE_VENV_GPU: (make_n("-B", *MAKE_VENV_GPU.split()[1:], expect='"torch==2.14.1"'),),
    MAKE_VENV_INDEX: (make_n("-B", *MAKE_VENV_INDEX.split()[1:],
                             expect="--index-url https://download.pytorch.org/whl/cu128"),),
    "make lock": (make_n("-B", "lock", expect="pip freeze"),),
    "pip install -c .venv/constraints.txt -e .[data,train,eval,dev]":  # step 3 of `make venv`
        (make_n("-B", "venv", expect='-c .venv/constraints.txt -e ".[data,train,eval,dev]"'),),
    "pip install .": (py("-m", "pip", "--version", expect="pip "),),
    "pip install -e .": (py("-m", "pip", "--version", expect="pip "),),
    "python mvar_dist/install_lock.py constraints.txt .venv/constraints.txt":
        (py(str(REPO / "mvar_dist" / "install_lock.py"), str(REPO / "constraints.txt"), "{tmp}/constraints.txt"),),
    "python -m pip install -c .venv/constraints.txt -e .[gpu]":
        (py("-c", "import importlib.metadata as m; print(m.metadata('mvar-dist').get_all('Provides-Extra'))",
            expect="'gpu'"),),
    "bash .ci/run": (Cheap(("bash", "-n", ".ci/run")), MAKE_TEST),
    "python launchers/demo.py optim.epochs=40 --tok optim.max_steps=600":
        (py("launchers/demo.py", "--dry-run", "optim.epochs=40", "--tok", "optim.max_steps=600", expect="40 epoch(s)"),),
    "make clean-demo": (make_n("clean-demo", expect="rm -rf outputs/demo_data outputs/demo"),),
    "python launchers/demo.py --until shards": (py("launchers/demo.py", "--until", "shards", "--dry-run",
                                                   expect="[demo] dry run"),),
    "python launchers/train_tokenizer.py --config configs/tokenizer/demo.yaml data.root=outputs/demo_data":
        (TOK_TRAIN_HELP, py("-c", "from mvar_dist.train.tokenizer.config import load_tok_config as f; "
                                  "print(f('configs/tokenizer/demo.yaml', ['data.root=outputs/demo_data']).optim.max_steps)",
                            expect="400"),),
    "python -m mvar_dist fd-demo outputs/sweeps/cpu_demo/runs/mvar-d3-s160-s0 --eval-dir outputs/eval": (FD_DEMO_HELP,),
    "python -m mvar_dist fd-demo {run_dir} --eval-dir {eval_dir}": (FD_DEMO_HELP,),
    # docs/ema.md: the flags exist, the overrides parse; the EMA itself runs in test_ema_zero3.py and test_train_loop.py
    "deepspeed --num_gpus 8 launchers/train.py --config mvar_d16 ema.enabled=true ema.decay=0.9999":
        (DEEPSPEED_HELP, TRAIN_HELP, config("mvar_d16", "ema.enabled=true", "ema.decay=0.9999", expect="decay: 0.9999")),
    "python launchers/sample.py sample --ckpt RUN/checkpoints/step_00100000 --out S --weights ema":
        (py("launchers/sample.py", "sample", "--help", expect="--weights", slow=True),),
    "python launchers/eval_service.py --roots runs/x --work-dir outputs/eval --weights ema":
        (py("launchers/eval_service.py", "--help", expect="--weights", slow=True),),
    "python -m mvar_dist fd-demo RUN --eval-dir outputs/eval --weights ema":
        (py("-m", "mvar_dist", "fd-demo", "--help", expect="--weights"),),
    "python launchers/scaling_sweep.py analyze cpu_demo --weights ema":
        (py("launchers/scaling_sweep.py", "analyze", "--help", expect="--weights"),),
    "python -m mvar_dist plan --config mvar_d30 --gpus 16 --gpu-mem-gib 80 ema.enabled=true":
        (py("-m", "mvar_dist", "plan", "--config", "mvar_d30", "--gpus", "16", "--gpu-mem-gib", "80", "ema.enabled=true",
            expect="EMA of the weights (fp32, 1/N)"),),
    "python benchmarks/ema.py": (py("benchmarks/ema.py", "--help", expect=("--presets", "--batch", "--precision")),),
    # the package CLI
    "python -m mvar_dist doctor": (DOCTOR,),
    "python -m mvar_dist plan": (py("-m", "mvar_dist", "plan", "--help", expect=("--gpus", "--gpu-mem-gib")),),
    # docs/memory_planner.md: the planner runs on a meta-device model in seconds, so run the commands as shown
    "python -m mvar_dist plan --config mvar_d30 --gpus 16 --gpu-mem-gib 80":
        (py("-m", "mvar_dist", "plan", "--config", "mvar_d30", "--gpus", "16", "--gpu-mem-gib", "80",
            expect=("largest micro batch that fits", "step time")),),
    "python -m mvar_dist plan --config var_d24 --gpus 8 --gpu-mem-gib 40 --micro-batch 16 --act-checkpoint off":
        (py("-m", "mvar_dist", "plan", "--config", "var_d24", "--gpus", "8", "--gpu-mem-gib", "40", "--micro-batch",
            "16", "--act-checkpoint", "off", expect="activation checkpointing off"),),
    "python -m mvar_dist plan --config mvar_d30 --gpus 32 --gpu-mem-gib 80 optim.global_batch=2048 --json":
        (py("-m", "mvar_dist", "plan", "--config", "mvar_d30", "--gpus", "32", "--gpu-mem-gib", "80",
            "optim.global_batch=2048", "--json", expect='"global_batch": 2048'),),
    # the calibration itself runs in tests/unit/test_memory_plan.py (test_predicted_activation_peak_within_15_percent_...)
    "python benchmarks/memory_plan.py": (py("benchmarks/memory_plan.py", "--help", expect=("--configs", "--batch")),),
    "python benchmarks/memory_plan.py --device cuda --dtype bf16 --configs mvar_d12 var_d12 --batch 8":
        (py("benchmarks/memory_plan.py", "--help", expect=("--device", "--dtype")),),
    "python -m mvar_dist presets": (py("-m", "mvar_dist", "presets", expect=("mvar_d16", "var_d30", "demo")),),
    "python -m mvar_dist config mvar_d16 optim.tblr=8e-5": (config("mvar_d16", "optim.tblr=8e-5",
                                                                   expect="tblr: 8.0e-05"),),
    "python -m mvar_dist config mvar_d16 model.depth=20 optim.tblr=8e-5 tokenizer.patch_nums=[1,2,3,4,6,9,13,18,24,32]"
    " tokenizer.resolution=512": (config("mvar_d16", "model.depth=20", "optim.tblr=8e-5",
                                         "tokenizer.patch_nums=[1,2,3,4,6,9,13,18,24,32]", "tokenizer.resolution=512",
                                         expect="resolution: 512"),),
    "python -m mvar_dist demo-data out/ --per-class 50 --size 256":
        (py("-m", "mvar_dist", "demo-data", "out/", "--per-class", "1", "--size", "32", cwd="tmp",
            expect="wrote 10 images"),),
    # tokenisation
    "python launchers/pretokenize.py --config demo --num-actors 2": (PRETOK_HELP, PRETOK_HELP_ELSEWHERE,
                                                                        config("demo")),
    "python launchers/pretokenize.py --config demo --source outputs/demo_data --dest outputs/demo/shards"
    " --num-actors 2": (PRETOK_HELP, config("demo")),
    "python launchers/pretokenize.py --verify --dest outputs/demo/shards": (PRETOK_HELP,),
    "python launchers/reshard.py --source outputs/old/shards --dest outputs/new/shards":
        (py("launchers/reshard.py", "--help", expect=("--source", "--work-dir", "--seed")),),
    "ray job submit": (RAY_SUBMIT_HELP,),
    "RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 -- python /path/to/repo/launchers/pretokenize.py"
    " --config mvar_d16 --source s3://bucket/imagenet/train --dest s3://bucket/tokens/d16-k10 --variants 10"
    " --num-actors 8 --num-gpus 1 --batch-size 128 --images-per-shard 1000"
    " tokenizer.checkpoint=/shared/vae_ch160v4096z32.pth":
        (RAY_SUBMIT_HELP, PRETOK_HELP_ELSEWHERE, config("mvar_d16", "tokenizer.checkpoint=/shared/vae.pth")),
    # training
    "deepspeed --num_gpus 2 launchers/train.py --config demo --ds_config configs/zero3.json --resume auto":
        (DEEPSPEED_HELP, TRAIN_HELP, config("demo")),
    "deepspeed launchers/train.py --config mvar_d16 --ds_config configs/zero3.json data.shards=s3://bucket/tok256":
        (DEEPSPEED_HELP, TRAIN_HELP, config("mvar_d16", "data.shards=s3://bucket/tok256")),
    "deepspeed --hostfile hosts --num_nodes 4 --num_gpus 8 launchers/train.py --config mvar_d30 data.shards=...":
        (DEEPSPEED_HELP, TRAIN_HELP, config("mvar_d30", "data.shards=s3://bucket/tok")),
    "torchrun --nproc_per_node 2 launchers/train.py --config mvar_tiny data.shards=outputs/tok out_dir=runs/tiny":
        (TORCHRUN_HELP, TRAIN_HELP, config("mvar_tiny", "data.shards=outputs/tok", "out_dir=runs/tiny")),
    "deepspeed --num_gpus 2 launchers/train.py --config mvar_tiny ...": (DEEPSPEED_HELP, TRAIN_HELP),
    "python launchers/train.py --config mvar_tiny data.shards=...":
        (TRAIN_HELP, config("mvar_tiny", "data.shards=outputs/tok")),
    "deepspeed --num_gpus 8 ...": (DEEPSPEED_HELP,),
    "tensorboard --logdir <out_dir>/tb --host 127.0.0.1 --port 6006":
        (tool("tensorboard", "--help", expect=("--logdir", "--host", "--port")),),
    "python step_X/ds/zero_to_fp32.py step_X/ds out_dir --tag state":
        (py("-m", "deepspeed.utils.zero_to_fp32", "--help", expect="--tag", slow=True),),
    # tokenizer training (docs/tokenizer_training.md)
    "python launchers/train_tokenizer.py --help": (TOK_TRAIN_HELP,),
    "python launchers/train_tokenizer.py data.root=data/images out_dir=runs/tok": (TOK_TRAIN_HELP,),
    "python launchers/train_tokenizer.py init=vae_ch160v4096z32.pth data.root=data/images out_dir=runs/ft"
    " optim.lr=3e-5":
        (TOK_TRAIN_HELP,),
    "python launchers/train_tokenizer.py --resume none data.root=data/images out_dir=runs/tok": (TOK_TRAIN_HELP,),
    "python -m torch.distributed.run": (TORCH_DIST_RUN_HELP,),
    "python -m torch.distributed.run --nproc_per_node 2 launchers/train_tokenizer.py data.root=data/images"
    " out_dir=runs/tok": (TORCH_DIST_RUN_HELP, TOK_TRAIN_HELP),
    "deepspeed launchers/train_tokenizer.py ...": (DEEPSPEED_HELP, TOK_TRAIN_HELP),
    # tokenizer evaluation (docs/tokenizer_training.md, "Evaluating a tokenizer")
    "python launchers/eval_tokenizer.py --help": (TOK_EVAL_HELP,),
    "python launchers/eval_tokenizer.py --checkpoint runs/tok/export/vae.safetensors --images data/val"
    " --results outputs/eval": (TOK_EVAL_HELP,),
    "python launchers/eval_tokenizer.py --checkpoint runs/tok/ckpt/step_00010000 --images data/val"
    " --lpips-vgg vgg16.pth --inception-weights pt_inception-2015-12-05-6726825d.pth": (TOK_EVAL_HELP,),
    "python launchers/eval_service.py --kind tokenizer --roots runs/tok --images data/val --work-dir outputs/eval"
    " --once": (TOK_EVAL_SERVICE_HELP,),
    # multi-node launches (docs/multinode.md): the launchers' flags, the script, the config with its overrides
    MN_DS: (MN_DEEPSPEED_HELP, TRAIN_HELP, MN_CONFIG),
    MN_DS_NO_SSH: (MN_DEEPSPEED_HELP, TRAIN_HELP, MN_CONFIG),
    MN_TORCHRUN_C10D: (MN_TORCHRUN_HELP, TRAIN_HELP, MN_CONFIG),
    MN_TORCHRUN_STATIC: (MN_TORCHRUN_HELP, TRAIN_HELP, MN_CONFIG),
    MN_SRUN: (Cheap(("bash", "-n", "launchers/slurm_env.sh")), TRAIN_HELP, MN_CONFIG),
    # sampling and evaluation
    "python launchers/sample.py --help": (SAMPLE_HELP,),
    "torchrun --nproc_per_node 8 launchers/sample.py sample --ckpt RUN/checkpoints/step_00100000 --out S --npz":
        (TORCHRUN_HELP, py("launchers/sample.py", "sample", "--help", expect=("--ckpt", "--out", "--npz"), slow=True)),
    "python launchers/sample.py pack S S.npz --expected 50000":
        (py("launchers/sample.py", "pack", "--help", expect="--expected", slow=True),),
    "python launchers/sample.py metrics S --inception-weights W --reference R.npz":
        (py("launchers/sample.py", "metrics", "--help", expect=("--inception-weights", "--reference"), slow=True),),
    "python launchers/eval_service.py --roots outputs/demo/checkpoints --work-dir outputs/demo/eval --once"
    " --config demo": (py("launchers/eval_service.py", "--roots", "{tmp}/runs", "--work-dir", "{tmp}/eval", "--once",
                             "--config", "demo", expect="nothing new under", slow=True),),
    "python launchers/eval_service.py --roots outputs/demo --work-dir outputs/demo/eval --once --config demo":
        (EVAL_HELP, config("demo")),
    "python launchers/eval_service.py --roots runs/ s3://bucket/runs --work-dir eval/ --poll 300 --inception-weights"
    " pt_inception-2015-12-05-6726825d.pth --reference VIRTUAL_imagenet256_labeled.npz": (EVAL_HELP,),
    "python launchers/eval_service.py --fetch-inception DIR": (EVAL_HELP,),
    EVAL_TORCHRUN: (TORCHRUN_HELP, EVAL_MODE_HELP),
    EVAL_TORCHRUN_N: (TORCHRUN_HELP, EVAL_MODE_HELP),
    RELEASED_EVAL: (TORCHRUN_HELP, EVAL_MODE_HELP, config("var_d16")),
    IMPORT_VAR: (IMPORT_HELP, config("var_d16")),
    IMPORT_MVAR: (IMPORT_HELP, config("mvar_d16")),
    "python benchmarks/eval_modes.py --fixture ../shared/fixtures/adm_protocol/adm_protocol_visible.npz":
        (py("benchmarks/eval_modes.py", "--help", expect="--fixture"),),
    # scaling sweeps
    "python launchers/scaling_sweep.py plan var_mvar_scaling":
        (py("launchers/scaling_sweep.py", "plan", "var_mvar_scaling", expect="sweep var_mvar_scaling: 20 runs",
            slow=True),),
    "python launchers/scaling_sweep.py run cpu_demo": (CPU_DEMO_PLAN,),
    "python launchers/scaling_sweep.py run my.yaml --ray http://127.0.0.1:8265 --wait": (SWEEP_RUN_HELP,),
    "python launchers/scaling_sweep.py analyze cpu_demo":
        (py("launchers/scaling_sweep.py", "analyze", "--help", expect="--n-boot"),),
    # tests named in the docs: collected (not run) in one go
    "python -m pytest tests/unit/test_loader.py tests/integration/test_loader_mp.py tests/integration/test_loader_workers.py -q": (PYTEST_COLLECT,),
    "python -m pytest tests/unit/test_config.py -q": (PYTEST_COLLECT,),
    "python -m pytest tests/unit/test_config.py::test_yaml_round_trip -q": (PYTEST_COLLECT,),
    "pytest tests/unit/test_scaling.py tests/integration/test_scaling_runner.py tests/integration/test_scaling_ray.py": (PYTEST_COLLECT,),
    "python -m pytest -q tests/unit/test_ssd.py tests/unit/test_causal_conv.py": (PYTEST_COLLECT,),
    "python -m pytest -q tests/unit/test_tokenizer.py tests/unit/test_tokenizer_units.py tests/unit/test_codebook_op.py":
        (PYTEST_COLLECT,),
    # benchmarks (never part of the tests; their options are checked)
    "python benchmarks/loader.py --epochs 5 [--step-ms 1]": (py("benchmarks/loader.py", "--help",
                                                                 expect=("--epochs", "--step-ms")),),
    "python benchmarks/pretokenize.py [--configs mvar_tiny,demo,mvar_d16] [--per-class N] [--actors 1,2]":
        (py("benchmarks/pretokenize.py", "--help", expect=("--configs", "--per-class", "--actors")),
         py(str(REPO / "benchmarks" / "pretokenize.py"), "--help", expect="--skip-job", cwd="tmp")),
    "python benchmarks/eval.py --config mvar_d16 --batch 64 --device cuda":
        (py("benchmarks/eval.py", "--help", expect=("--config", "--batch", "--device"), slow=True),),
    "python benchmarks/class_mix.py": (py("benchmarks/class_mix.py", "--classes", "100", "--per-class", "50",
                                          "--batch", "64", "--window", "256", "--per-shard", "40", "--epochs", "1",
                                          expect=("dealt shards", "sorted shards")),
                                       py("benchmarks/class_mix.py", "--help", expect=("--classes", "--window"))),
    "python benchmarks/precision_drift.py": (py("benchmarks/precision_drift.py", "--help",
                                                expect=("--config", "--steps")),),
    "python benchmarks/ssd.py": (py("benchmarks/ssd.py", "--help", expect="--lengths", slow=True),),
    "python benchmarks/ssd.py --batch 32 --heads 32 --lengths 256,680,1024 --dtype bf16":
        (py("benchmarks/ssd.py", "--help", expect=("--batch", "--heads", "--dtype"), slow=True),),
    "TRITON_INTERPRET=1 python benchmarks/ssd.py --batch 1 --heads 2 --headdim 16 --dstate 16 --lengths 64":
        (py("benchmarks/ssd.py", "--help", expect=("--headdim", "--dstate"), slow=True),),
    "python benchmarks/tokenizer.py [--checkpoint vae_ch160v4096z32.pth] [--batch N] [--iters K]"
    " [--modes fp32,bf16,tf32] [--small]":
        (py("benchmarks/tokenizer.py", "--help", expect=("--checkpoint", "--iters", "--modes", "--small"), slow=True),),
    "python benchmarks/sampler.py": (py("benchmarks/sampler.py", "--help", expect=("--depths", "--width"), slow=True),),
    "python benchmarks/sampler.py --draw-only": (py("benchmarks/sampler.py", "--help", expect="--draw-only", slow=True),),
    "python benchmarks/train.py [--presets ...] [--nproc N] [--global_batch B] [--precision bf16]":
        (py("benchmarks/train.py", "--help", expect=("--presets", "--nproc", "--global_batch", "--precision")),),
}
# Benchmarks the README names without a command line: their --help must work too.
MENTIONED_ONLY = (py("benchmarks/model.py", "--help", expect="--device", slow=True),
                  py("benchmarks/gpu_suite.py", "--help", expect=("--dry-run", "--smoke", "--out")))

# Commands whose real run is too expensive or needs a cluster/network here: where they run for real.
ELSEWHERE: Dict[str, str] = {
    "git clone <repo> mvar-dist && cd mvar-dist":
        ".ci/run: placeholder remote, needs the network; CI runs the suite on a fresh clone",
    "make test": ".ci/run: CI runs exactly this",
    "pip install .": "tests/integration/test_package.py::test_wheel_installs_the_same_package_tree: builds and installs the wheel",
    "pip install -e .": "tests/integration/test_package.py::test_mapped_packages_import_from_anywhere: the editable install",
    "bash .ci/run": ".ci/run: the CI entry point itself",
    "python benchmarks/gpu_suite.py --dry-run": "tests/integration/test_gpu_suite.py::test_dry_run_lists_every_row_with_its_baseline",
    "python benchmarks/gpu_suite.py --smoke --device cpu": "tests/integration/test_gpu_suite.py::test_smoke_runs_every_row (slow)",
    "python benchmarks/gpu_suite.py --out suite_out":
        "tests/integration/test_gpu_suite.py::test_smoke_runs_every_row: needs a GPU; the same rows run at toy sizes on "
        "CPU (--smoke), and the dry run lists them",
    "python -m pytest -m slow": ".ci/run: `make test` runs the slow tests with the rest",
    MN_DS_NO_SSH: "tests/integration/test_multinode.py::test_deepspeed_two_nodes_match_one_node: two --no_ssh nodes, 127.0.0.1",
    MN_TORCHRUN_C10D: "tests/integration/test_multinode.py::test_torchrun_two_nodes_match_one_node: [c10d], two nodes, 127.0.0.1",
    MN_TORCHRUN_STATIC: "tests/integration/test_multinode.py::test_torchrun_two_nodes_match_one_node: [static], node rank 0 = rank 0",
    MN_DS: "tests/integration/test_multinode.py::test_pdsh_runner_starts_the_same_launch_on_every_host: stand-in ssh/pdsh "
           "record each host's launch.py command (no ssh here)",
    MN_SRUN: "tests/integration/test_multinode.py::test_slurm_env_two_tasks_match_one_node: fake SLURM_* variables, no srun",
    "python launchers/train_tokenizer.py data.root=data/images out_dir=runs/tok":
        "tests/integration/test_tokenizer_training_run.py::test_documented_commands: tiny one-process run",
    "python launchers/train_tokenizer.py init=vae_ch160v4096z32.pth data.root=data/images out_dir=runs/ft"
    " optim.lr=3e-5":
        "tests/integration/test_tokenizer_training_run.py::test_documented_commands: fine-tune from an official-key file",
    "python launchers/train_tokenizer.py --resume none data.root=data/images out_dir=runs/tok":
        "tests/integration/test_tokenizer_training_run.py::test_documented_commands: `--resume none`, missing folder",
    "python -m torch.distributed.run --nproc_per_node 2 launchers/train_tokenizer.py data.root=data/images"
    " out_dir=runs/tok": "tests/integration/test_tokenizer_training_run.py::test_two_gloo_ranks_equal_one_rank",
    "python launchers/eval_tokenizer.py --checkpoint runs/tok/export/vae.safetensors --images data/val"
    " --results outputs/eval":
        "tests/unit/test_tokenizer_eval.py::test_command_row_contents_and_idempotent: tiny .safetensors/.pth, 6 images",
    "python launchers/eval_tokenizer.py --checkpoint runs/tok/ckpt/step_00010000 --images data/val"
    " --lpips-vgg vgg16.pth --inception-weights pt_inception-2015-12-05-6726825d.pth":
        "tests/unit/test_tokenizer_eval.py::test_command_row_contents_and_idempotent: random LPIPS/Inception weights "
        "(step folders: test_service_evaluates_each_tokenizer_step_once)",
    "python launchers/eval_service.py --kind tokenizer --roots runs/tok --images data/val --work-dir outputs/eval"
    " --once": "tests/unit/test_tokenizer_eval.py::test_service_evaluates_each_tokenizer_step_once: a tiny trainer run",
    "make sweep-demo": "tests/integration/test_scaling_runner.py::test_launcher_plan_and_run: the same CLI `run` (stand-in "
                       "trainer); tests/integration/test_demo.py: the demo stages it runs first; the real sweep takes about "
                       "10 minutes (docs/scaling_laws.md, CPU demo)",
    "python launchers/demo.py --until shards":
        "tests/integration/test_demo.py::test_demo_runs_every_stage_then_skips_finished_work: the re-run stops after the shards",
    "python launchers/train_tokenizer.py --config configs/tokenizer/demo.yaml data.root=outputs/demo_data":
        "tests/integration/test_demo.py::test_demo_runs_every_stage_then_skips_finished_work: the demo runs this config (4 steps)",
    "python -m mvar_dist fd-demo outputs/sweeps/cpu_demo/runs/mvar-d3-s160-s0 --eval-dir outputs/eval":
        "tests/unit/test_demo_classifier.py::test_fd_demo_command_writes_one_row_per_checkpoint_once",
    "python -m mvar_dist fd-demo {run_dir} --eval-dir {eval_dir}":
        "tests/unit/test_demo_classifier.py::test_fd_demo_command_writes_one_row_per_checkpoint_once",
    "make demo": "tests/integration/test_demo.py::test_demo_runs_every_stage_then_skips_finished_work: every stage, tiny step "
                 "counts, then a re-run that skips them; the full demo takes about 8 minutes (docs/LOG.md)",
    "python launchers/scaling_sweep.py run cpu_demo": "tests/integration/test_scaling_runner.py::test_launcher_plan_and_run",
    "python launchers/scaling_sweep.py analyze cpu_demo":
        "tests/integration/test_scaling_runner.py::test_results_table_fits_and_plots: table, fits and plots from run outputs",
    "python launchers/scaling_sweep.py run my.yaml --ray http://127.0.0.1:8265 --wait":
        "tests/integration/test_scaling_ray.py::test_sweep_as_ray_jobs_completes_skips_and_reports_failures: a live Ray head",
    "RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 -- python /path/to/repo/launchers/pretokenize.py"
    " --config mvar_d16 --source s3://bucket/imagenet/train --dest s3://bucket/tokens/d16-k10 --variants 10"
    " --num-actors 8 --num-gpus 1 --batch-size 128 --images-per-shard 1000"
    " tokenizer.checkpoint=/shared/vae_ch160v4096z32.pth":
        "tests/integration/test_tokenize_job.py::test_ray_job_submit_tokenizes_on_the_cluster: token-auth head, local files",
    "torchrun --nproc_per_node 2 launchers/train.py --config mvar_tiny data.shards=outputs/tok out_dir=runs/tiny":
        "tests/integration/test_train_loop.py::test_loss_decreases_and_ranks_agree: 2 gloo ranks, ZeRO-3",
    "python launchers/train.py --config mvar_tiny data.shards=...":
        "tests/integration/test_train_loop.py::test_resume_on_one_rank_from_two_rank_checkpoint: one process, no launcher",
    "python -m deepspeed.checkpoint.ds_to_universal --input_folder step/ds/state --output_folder step/ds/.tmp.universal"
    " --inject_missing_state":
        "tests/integration/test_train_loop.py::test_resume_on_one_rank_from_two_rank_checkpoint: the trainer runs this conversion",
    "torchrun --nproc_per_node 8 launchers/sample.py sample --ckpt RUN/checkpoints/step_00100000 --out S --npz":
        "tests/integration/test_eval_cli.py::test_torchrun_two_ranks_match_one_process: 2 ranks, tiny checkpoint",
    "python launchers/eval_service.py --roots outputs/demo --work-dir outputs/demo/eval --once --config demo":
        "tests/integration/test_eval_service.py::test_service_evaluates_complete_checkpoints_once_and_survives_restart",
    "python launchers/eval_service.py --roots runs/ s3://bucket/runs --work-dir eval/ --poll 300 --inception-weights"
    " pt_inception-2015-12-05-6726825d.pth --reference VIRTUAL_imagenet256_labeled.npz":
        "tests/integration/test_eval_cli.py::test_service_over_s3_sees_only_complete_checkpoints: local + s3:// (moto)",
    EVAL_TORCHRUN: "tests/integration/test_eval_cli.py::test_service_on_two_ranks_with_kill_and_restart_equals_one_process",
    EVAL_TORCHRUN_N: "tests/integration/test_eval_cli.py::test_service_on_two_ranks_with_kill_and_restart_equals_one_process",
    RELEASED_EVAL: "tests/integration/test_eval_cli.py::test_service_on_two_ranks_with_kill_and_restart_equals_one_process:"
                   " tiny checkpoints, random Inception weights (no released weights or GPU in CI)",
    "python tests/fixtures/make_parity_fixtures.py":
        "tests/unit/test_eval_inception.py::test_pool_features_and_fid_equal_vendored_pytorch_fid_outputs and"
        " tests/unit/test_tokenizer_training_lpips.py::test_lpips_equals_vendored_lpips_outputs read what it writes;"
        " it runs only where the `parity` extra (torchvision) is installed",
    IMPORT_VAR: "tests/integration/test_eval_cli.py::test_import_official_then_sample: a tiny VAR, then sampled",
    IMPORT_MVAR: "tests/integration/test_eval_cli.py::test_import_official_then_sample: a tiny VAR, then sampled",
}


def _all_cheap() -> List[Cheap]:
    """Each distinct runnable form once, with the expectations of every command that uses it merged."""
    seen: Dict[str, Cheap] = {}
    for c in [c for forms in COVERED.values() for c in forms] + list(MENTIONED_ONLY):
        old = seen.get(c.id)
        seen[c.id] = c if old is None else Cheap(c.argv, tuple(dict.fromkeys(old.expect + c.expect)), c.rc, c.cwd,
                                                 old.slow or c.slow)
    return list(seen.values())


def _batched(c: Cheap) -> bool:
    """`python SCRIPT|-m MODULE args` run in the repo: executed together in one interpreter (see _DRIVER)."""
    args = c.argv[1:]
    return (c.argv[0] == "{python}" and c.cwd == "repo" and not any("{tmp}" in a for a in args)
            and args[0] != "-c" and args[:2] != ("-m", "pytest"))


_BATCH_RESULTS: Dict[bool, Dict[str, dict]] = {}


def _batch_result(cheap: Cheap) -> dict:
    """Runs every batched form with the same `slow` flag at once (first use), returns this one's {rc, out}."""
    if cheap.slow not in _BATCH_RESULTS:
        forms = [c for c in _all_cheap() if _batched(c) and c.slow == cheap.slow]
        _BATCH_RESULTS[cheap.slow] = {c.id: r for c, r in zip(forms, run_batch(forms))}
    return _BATCH_RESULTS[cheap.slow][cheap.id]


def unmapped(docs) -> Dict[str, List[str]]:
    return {c: where for c, where in documented(docs).items() if c not in COVERED and c not in ELSEWHERE}


def test_extraction_finds_blocks_continuations_and_inline_commands():
    text = ("run `make demo`, not `deepspeed`\n```bash\n# comment\n.venv/bin/python a.py --x \\\n    --y 1   # why\n"
            "```\n```\ntree/ not a command\n```\n```python\nimport os\n```\n`CI=true bash .ci/run`\n")
    assert extract_commands(text) == ["python a.py --x --y 1", "make demo", "CI=true bash .ci/run"]
    assert {"make demo", "make sweep-demo", "python -m mvar_dist doctor"} <= set(documented(DOCS))


def test_every_documented_command_is_mapped():
    missing = unmapped(DOCS)
    assert not missing, ("documented commands with no cheap form in COVERED and no test in ELSEWHERE "
                         f"(add one to {Path(__file__).name}): {missing}")


def test_a_new_unmapped_command_fails_the_check(tmp_path):
    doc = tmp_path / "new.md"
    doc.write_text("Try this:\n\n```bash\n.venv/bin/python launchers/train.py --config mvar_d99\n```\n")
    command = "python launchers/train.py --config mvar_d99"
    assert command not in unmapped(DOCS) and unmapped([*DOCS, doc])[command] == ["new.md"]


def test_no_stale_entries():
    docs = documented(DOCS)
    stale = [c for c in list(COVERED) + list(ELSEWHERE) if c not in docs]
    assert not stale, f"entries for commands no document shows any more: {stale}"
    assert all(COVERED.get(c) for c in docs if c not in ELSEWHERE)


def test_elsewhere_names_an_existing_test():
    for command, reason in ELSEWHERE.items():
        where = reason.split(":", 1)[0].strip()
        path, _, func = where.partition("::")
        assert (REPO / path).is_file(), f"{command!r}: {path} does not exist"
        if func:
            assert re.search(rf"^def {re.escape(func)}\(", (REPO / path).read_text(), re.M), f"{command!r}: no {where}"


def test_paths_in_documented_commands_exist():
    for command in documented(DOCS):
        for tok in command.split():
            if REPO_PATH.match(tok):
                path, _, func = tok.partition("::")
                assert (REPO / path).exists(), f"{command!r}: {path} does not exist"
                if func:
                    assert f"def {func}(" in (REPO / path).read_text(), f"{command!r}: no test {func} in {path}"


def test_every_mentioned_script_exists_and_has_a_help_check():
    mentioned = {m for doc in DOCS for m in SCRIPT.findall(doc.read_text(encoding="utf-8"))}
    helped = {a for c in _all_cheap() for a in c.argv if SCRIPT.search(a) and "--help" in c.argv}
    helped = {SCRIPT.search(a).group(1) for a in helped}
    for script in sorted(mentioned):
        assert (REPO / script).is_file(), f"docs mention {script}, which does not exist"
    assert mentioned - helped == set(), f"scripts in the docs without a --help check: {mentioned - helped}"


@pytest.mark.parametrize("cheap", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                   for c in _all_cheap()])
def test_cheap_form_runs(cheap, tmp_path):
    if _batched(cheap):
        res = _batch_result(cheap)
        rc, text, stdout = res["rc"], res["out"], res["out"]
    else:
        out = run_alone(cheap, tmp_path)
        rc, text, stdout = out.returncode, out.stdout + out.stderr, out.stdout
    assert rc == cheap.rc, f"{cheap.id}: rc {rc}\n{text[-3000:]}"
    for want in cheap.expect:
        assert want in text, f"{cheap.id}: {want!r} not in output\n{text[-3000:]}"
    if cheap.argv[0] == "make":  # every script a recipe runs must exist
        for tok in shlex.split(stdout.replace("||", " ").replace(";", " ")):
            if tok.endswith(".py") and not tok.startswith("/"):
                assert (REPO / tok).is_file(), f"{cheap.id}: the recipe runs {tok}, which does not exist"


@pytest.mark.slow
def test_make_sweep_demo_sweep_resolves_as_the_makefile_names_it(tmp_path, monkeypatch):
    """`make sweep-demo` ends in `scaling_sweep.py run <sweep>`: that exact argument must name the shipped
    sweep from any folder (planning that sweep is the `run cpu_demo --dry-run` cheap form above)."""
    from mvar_dist.scaling.sweep import SweepError, load_sweep

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    recipe = subprocess.run(["make", "-n", "sweep-demo"], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env=make_env()).stdout
    runs = [shlex.split(line) for line in recipe.splitlines() if "scaling_sweep.py" in line]
    assert len(runs) == 1 and runs[0][-2] == "run", recipe
    monkeypatch.chdir(tmp_path)  # from another folder
    assert load_sweep(runs[0][-1]).name == "cpu_demo"
    with pytest.raises(SweepError, match="cpu_demo, var_mvar_scaling"):
        load_sweep("sweeps/nope")
