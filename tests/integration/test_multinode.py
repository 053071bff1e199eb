"""Multi-node runs on one machine: two "nodes" on 127.0.0.1, one gloo rank each, training mvar_tiny.

Every launch form of docs/multinode.md runs here (the pdsh one with stand-ins), each node its own launcher
process (its own process group, so a test only ever signals or kills what it started):
- `deepspeed --hostfile H --no_ssh --node_rank R --master_addr 127.0.0.1 --master_port P`, each node
  with its own node-local scratch (its run folder and the S3 shard cache `data.cache_dir`), the
  checkpoint root shared: per-step losses equal a 1-node 2-rank run with the same global batch;
  only global rank 0 writes the shared files; per-node files stay on their node;
- SIGTERM to one node's launcher (its process group, as Slurm or a terminal signals it) stops both
  nodes at the same step with a complete checkpoint, and neither hangs;
- the pdsh form (`deepspeed --hostfile H --master_addr ...`) with stand-in ssh/pdsh that record what each
  host would run: the same launch.py command per node as the --no_ssh form;
- `torchrun --nnodes 2 --node_rank R --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:P`, and the static
  rendezvous (`--master_addr/--master_port`): same losses;
- an s3:// checkpoint root with one node SIGKILLed mid-upload: test_multinode_s3.py;
- `srun ... bash launchers/slurm_env.sh python launchers/train.py ...`: the environment mapping with fake
  SLURM_* variables (and a fake `scontrol`), then a real 2-task run through it: same losses.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Sequence

import pytest
from s3_utils import free_port, moto_s3  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = "launchers/train.py"
SLURM_ENV = REPO / "launchers" / "slurm_env.sh"
BIN = Path(sys.executable).parent
MAX_STEPS = 6
TRAIN = ["--config", "mvar_tiny", f"optim.max_steps={MAX_STEPS}", "optim.tblr=0.05", "ckpt.every_steps=3",
         "ckpt.keep_last=3"]
SHARDS = dict(num_images=32, variants=2, images_per_shard=16, rows_per_group=8, seed=0)
TIMEOUT = 240  # seconds for one multi-process run under a loaded 2-core machine (a run takes ~20-40 s)


# ----------------------------------------------------------------------------------------- helpers
def _env(extra: Dict[str, str] = None) -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(REPO / ".torch_extensions"),
               PYTHONWARNINGS="ignore")
    env.update(extra or {})
    return env


def _jsonl(path: Path) -> List[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _steps(path: Path) -> Dict[int, dict]:
    return {r["step"]: r for r in _jsonl(path)}


def _files(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class Node:
    """One "node": a launcher started in its own session (process group), output to a log file."""

    def __init__(self, argv: Sequence[str], log: Path, env: Dict[str, str]):
        self.log = log
        self._fh = open(log, "w")
        self.proc = subprocess.Popen(list(argv), cwd=REPO, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the session leader's pid is its process group id
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def text(self) -> str:
        self._fh.flush()
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        """Kill whatever this node still runs (only its own process group) and close the log."""
        if self.proc.poll() is None:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(timeout=30)
        else:  # the launcher is gone; a child it orphaned would still be in the group
            self.signal_group(signal.SIGKILL)
        self._fh.close()


@contextmanager
def nodes(specs: Sequence[tuple]):
    """Start one Node per (argv, log, env); always kill what is left on exit."""
    started = []
    try:
        for argv, log, env in specs:
            started.append(Node(argv, log, env))
        yield started
    finally:
        for n in started:
            n.close()


def _wait_all(started: Sequence[Node], timeout: float = TIMEOUT) -> List[int]:
    deadline = time.time() + timeout
    rcs = []
    for n in started:
        try:
            rcs.append(n.wait(max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            logs = "\n".join(f"--- {x.log.name}\n{x.text()[-3000:]}" for x in started)
            pytest.fail(f"a node did not exit within {timeout} s (hang?):\n{logs}")
    return rcs


def _logs(started: Sequence[Node]) -> str:
    return "\n".join(f"--- {n.log.name}\n{n.text()[-4000:]}" for n in started)


def _trainer_pid(node: Node) -> int:
    """The training process a launcher started (a descendant in the node's own process group)."""
    import psutil

    for child in psutil.Process(node.proc.pid).children(recursive=True):
        cmd = child.cmdline()
        if LAUNCHER in cmd and "deepspeed.launcher.launch" not in cmd:
            return child.pid
    raise AssertionError(f"no trainer process under {node.proc.pid}")


def hostfile(tmp: Path) -> Path:
    """A DeepSpeed hostfile: two "nodes" of one slot each. With --no_ssh the names are only labels; the
    file's order defines node ranks and the global rank mapping, so every node must get the same file."""
    h = tmp / "hostfile"
    h.write_text("node-a slots=1\nnode-b slots=1\n")
    return h


def deepspeed_node(node_rank: int, hosts: Path, port: int, args: Sequence[str], script: str = LAUNCHER) -> List[str]:
    return [str(BIN / "deepspeed"), "--hostfile", str(hosts), "--no_ssh", "--node_rank", str(node_rank),
            "--master_addr", "127.0.0.1", "--master_port", str(port), script, *args]


def torchrun_node(node_rank: int, port: int, args: Sequence[str], rdzv: str = "c10d") -> List[str]:
    common = [str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(node_rank), "--nproc-per-node", "1"]
    if rdzv == "c10d":
        return [*common, "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "mn-test",
                LAUNCHER, *args]
    return [*common, "--master_addr", "127.0.0.1", "--master_port", str(port), LAUNCHER, *args]  # static


def assert_same_losses(got_dir: Path, ref_dir: Path, rank: int, steps=range(1, MAX_STEPS + 1)) -> None:
    got, ref = _steps(got_dir / "ranks" / f"rank{rank}.jsonl"), _steps(ref_dir / "ranks" / f"rank{rank}.jsonl")
    assert sorted(got) == list(steps), sorted(got)
    for s in steps:  # the same samples, the same all-reduced loss, and this rank's own half identical too
        assert got[s]["fingerprint"] == ref[s]["fingerprint"], s
        assert got[s]["loss"] == ref[s]["loss"], (s, got[s]["loss"], ref[s]["loss"])
        assert got[s]["local_loss"] == ref[s]["local_loss"], s


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tok_hash() -> str:
    from mvar_dist.config import load_config
    from mvar_dist.vqvae import MultiScaleVQVAE

    return MultiScaleVQVAE.from_config(load_config("mvar_tiny").tokenizer, seed=0).weights_hash()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tok_hash) -> Path:
    from shard_factory import write_token_shards

    root = tmp_path_factory.mktemp("tokens") / "tok"
    write_token_shards(str(root), tokenizer_hash=tok_hash, **SHARDS)
    return root


@pytest.fixture(scope="module")
def s3_shards(moto_s3, tok_hash):  # noqa: F811
    """The same shards (same seed: byte-identical) on the moto S3 server, so nodes cache them locally."""
    from shard_factory import write_token_shards

    _, bucket = moto_s3
    uri = f"s3://{bucket}/tok"
    manifest = write_token_shards(uri, tokenizer_hash=tok_hash, **SHARDS)
    return uri, manifest


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> Path:
    """One node, two ranks: `deepspeed --num_gpus 2` (on CPU: 2 gloo ranks), the same global batch (8)."""
    out = tmp_path_factory.mktemp("one_node") / "run"
    p = subprocess.run([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), LAUNCHER,
                        *TRAIN, f"data.shards={shards}", f"out_dir={out}"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out


# ----------------------------------------------------------------------------------------- tests
def test_stop_flag_takes_a_quick_repeat_as_the_same_request():
    """A scheduler signals every process and the launcher forwards another copy ms later: not an abort."""
    from mvar_dist.train.signals import StopFlag

    stop = StopFlag(repeat_s=0.5).install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the forwarded copy
        assert stop.requested and stop.signum == signal.SIGTERM
        time.sleep(0.6)
        with pytest.raises(KeyboardInterrupt):  # a deliberate second signal later still aborts
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    finally:
        stop.restore()


def test_local_device_index():
    from mvar_dist.distributed import local_device_index

    assert local_device_index(3, 8) == 3
    assert local_device_index(5, 1) == 0  # one GPU per task (srun --gpus-per-task=1)
    with pytest.raises(RuntimeError, match="LOCAL_RANK=8 but this process sees 8 GPU"):
        local_device_index(8, 8)


@pytest.mark.slow
def test_deepspeed_two_nodes_match_one_node(reference, s3_shards, tmp_path):
    uri, manifest = s3_shards
    shared = tmp_path / "shared"                       # what a cluster's shared filesystem holds
    scratch = [tmp_path / "node0", tmp_path / "node1"]  # each node's local disk
    hosts, port = hostfile(tmp_path), free_port()
    specs = []
    for r in (0, 1):
        (scratch[r] / "tmp").mkdir(parents=True)
        args = [*TRAIN, f"data.shards={uri}", f"data.cache_dir={scratch[r] / 'shard_cache'}",
                f"out_dir={scratch[r] / 'run'}", f"ckpt.dir={shared / 'checkpoints'}"]
        specs.append((deepspeed_node(r, hosts, port, args), tmp_path / f"node{r}.log",
                      _env({"TMPDIR": str(scratch[r] / "tmp")})))
    with nodes(specs) as started:
        rcs = _wait_all(started)
        assert rcs == [0, 0], _logs(started)
        log0, log1 = started[0].text(), started[1].text()
    # The launchers split the world as the hostfile says: node 0 holds global rank 0, node 1 rank 1.
    assert "nnodes=2, num_local_procs=1, node_rank=0" in log0 and "node_rank=1" in log1
    assert "'node-a': [0], 'node-b': [1]" in log0
    assert "2 rank(s) x micro 4 x accum 1 = global 8" in log0

    # Same losses as one node with two ranks, step by step, on both ranks.
    assert_same_losses(scratch[0] / "run", reference, 0)
    assert_same_losses(scratch[1] / "run", reference, 1)

    # Global rank 0 alone writes the run's shared outputs; node 1's run folder holds only its step log.
    run0 = _files(scratch[0] / "run")
    for f in ("metrics.jsonl", "summary.json", "config.yaml", "ranks/rank0.jsonl"):
        assert f in run0, run0
    assert any(f.startswith("tb/events.out.tfevents") for f in run0), run0
    assert "ranks/rank1.jsonl" not in run0
    assert _files(scratch[1] / "run") == ["ranks/rank1.jsonl"]
    assert json.loads((scratch[0] / "run" / "summary.json").read_text())["world_size"] == 2
    # No log line from rank 1: the console belongs to rank 0 as well.
    assert "[train]" in log0 and "[train]" not in log1

    # Node-local shard caches: each node downloaded (and verified) the shards into its own scratch.
    names = {f"{s.sha256}.parquet" for s in manifest.shards}
    for r in (0, 1):
        cached = set(_files(scratch[r] / "shard_cache"))
        assert cached and cached <= names, cached

    # The shared checkpoint root: both ranks' ZeRO-3 shards and RNG files, rank 0's small files + marker.
    from mvar_dist.train import checkpoint as ck

    root = shared / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000003", "step_00000006"]
    latest = ck.latest_checkpoint(root)
    assert latest is not None and latest.name == "step_00000006"
    files = _files(latest)
    for f in (ck.MARKER, "meta.json", "loader.json", "config.yaml", "model.safetensors", "rng/rank_00000.pt",
              "rng/rank_00001.pt"):
        assert f in files, files
    state = [f for f in files if f.startswith(f"{ck.DS_DIR}/")]
    assert any("rank_0_" in f for f in state) and any("rank_1_" in f for f in state), state
    assert ck.read_meta(latest)["world_size"] == 2


_FAKE_PDSH = """#!/bin/bash
# pdsh -S -f N -w host1,host2 CMD...: record CMD, with %n replaced by the host's index, in $PDSH_RECORD/<host>
while [ $# -gt 0 ]; do case "$1" in -S) shift ;; -f) shift 2 ;; -w) hosts="$2"; shift 2 ;; *) break ;; esac; done
cmd="$*"
i=0
for h in ${hosts//,/ }; do printf '%s\\n' "${cmd//%n/$i}" > "$PDSH_RECORD/$h"; i=$((i + 1)); done
"""


def test_pdsh_runner_starts_the_same_launch_on_every_host(tmp_path):
    """The hostfile form through pdsh, with stand-ins for ssh and pdsh that record what each host would
    run: host n gets deepspeed's launch.py with --node_rank=n, the same world info, master address and
    port and trainer arguments, from the same directory: the per-node launch the --no_ssh tests run."""
    import base64

    fakebin, record = tmp_path / "fakebin", tmp_path / "record"
    fakebin.mkdir()
    record.mkdir()
    (fakebin / "ssh").write_text("#!/bin/sh\nexit 0\n")  # the runner's "is the first host reachable" check
    (fakebin / "pdsh").write_text(_FAKE_PDSH)
    for exe in ("ssh", "pdsh"):
        (fakebin / exe).chmod(0o755)
    hosts, port = hostfile(tmp_path), 29517
    args = ["--config", "mvar_tiny", "--ds_config", "configs/zero3.json", "data.shards=s3://bucket/tok256"]
    p = subprocess.run([str(BIN / "deepspeed"), "--hostfile", str(hosts), "--master_addr", "127.0.0.1",
                        "--master_port", str(port), LAUNCHER, *args], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=_env({"PATH": f"{fakebin}:{os.environ['PATH']}", "PDSH_RECORD": str(record)}))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert sorted(x.name for x in record.iterdir()) == ["node-a", "node-b"]
    for rank, host in enumerate(["node-a", "node-b"]):
        cmd = (record / host).read_text().split()
        assert f"{REPO};" in cmd and cmd[cmd.index("-m") + 1] == "deepspeed.launcher.launch", cmd
        flags = dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
        assert flags["node_rank"] == str(rank) and flags["master_addr"] == "127.0.0.1"
        assert flags["master_port"] == str(port)
        world = json.loads(base64.urlsafe_b64decode(flags["world_info"]))
        assert world == {"node-a": [0], "node-b": [0]}  # the hostfile, in order, as under --no_ssh
        assert cmd[cmd.index(LAUNCHER) + 1:] == args


@pytest.mark.slow
def test_sigterm_to_one_node_stops_both_with_a_checkpoint(shards, tmp_path):
    shared, hosts, port = tmp_path / "shared", hostfile(tmp_path), free_port()
    long_run = ["--config", "mvar_tiny", "optim.max_steps=400", "optim.tblr=0.05", "ckpt.every_steps=1000",
                f"data.shards={shards}", f"ckpt.dir={shared / 'checkpoints'}"]
    specs = [(deepspeed_node(r, hosts, port, [*long_run, f"out_dir={tmp_path / f'node{r}' / 'run'}"]),
              tmp_path / f"node{r}.log", _env()) for r in (0, 1)]
    metrics = tmp_path / "node0" / "run" / "metrics.jsonl"
    with nodes(specs) as started:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and all(n.proc.poll() is None for n in started):
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, _logs(started)
        trainer = _trainer_pid(started[1])
        # Node 1 is preempted: SIGTERM to its launcher's process group (what Slurm and a terminal do; the
        # deepspeed runner alone does not forward a signal to its children under --no_ssh). The trainer
        # gets it from the group and again from launch.py; a scheduler's repeat 0.3 s later, mid-save,
        # must not turn the stop into an abort (before the fix it did: KeyboardInterrupt on rank 1, "Connection
        # closed by peer" on rank 0, no checkpoint).
        t0 = time.time()
        started[1].signal_group(signal.SIGTERM)
        time.sleep(0.3)
        try:
            os.kill(trainer, signal.SIGTERM)
        except ProcessLookupError:
            pass
        rc0, rc1 = _wait_all(started, timeout=120)
        took = time.time() - t0
        log0, log1 = started[0].text(), started[1].text()
    assert rc0 == 0, _logs(started)  # node 0 was never signalled: its rank saw the all-reduced flag
    assert rc1 != 0  # the signalled runner dies of SIGTERM; launch.py exits 1 after forwarding it
    assert "Killing subprocess" in log1  # deepspeed's launch.py forwarded SIGTERM to the trainer
    assert "stop requested (signal)" in log0, log0[-3000:]
    assert took < 60, f"the nodes took {took:.0f} s to stop"

    from mvar_dist.train import checkpoint as ck

    stopped = max(_steps(tmp_path / "node0" / "run" / "ranks" / "rank0.jsonl"))
    assert 3 <= stopped < 400
    # Both ranks stopped after the same step, and that step is checkpointed, complete, with both shards.
    assert max(_steps(tmp_path / "node1" / "run" / "ranks" / "rank1.jsonl")) == stopped
    latest = ck.latest_checkpoint(shared / "checkpoints")
    assert latest is not None and ck.read_meta(latest)["step"] == stopped, log0[-3000:]
    files = _files(latest)
    assert "rng/rank_00000.pt" in files and "rng/rank_00001.pt" in files
    assert f"saved step {stopped}, exiting" in log0
    assert not (tmp_path / "node0" / "run" / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("rdzv", ["c10d", "static"])
def test_torchrun_two_nodes_match_one_node(rdzv, reference, shards, tmp_path):
    port = free_port()
    # c10d ranks the nodes itself (sorted host name, agent pid; --node_rank is ignored), so rank 0 and the
    # logs may land on either node: one shared run folder. Static: --node_rank 0 holds global rank 0.
    outs = [tmp_path / "shared" / "run"] * 2 if rdzv == "c10d" else [tmp_path / f"node{r}" / "run" for r in (0, 1)]
    specs = [(torchrun_node(r, port, [*TRAIN, f"data.shards={shards}", f"out_dir={outs[r]}",
                                      f"ckpt.dir={tmp_path / 'shared' / 'checkpoints'}"], rdzv),
              tmp_path / f"node{r}.log", _env()) for r in (0, 1)]
    with nodes(specs) as started:
        rcs = _wait_all(started)
        assert rcs == [0, 0], _logs(started)
    assert_same_losses(outs[0], reference, 0)
    assert_same_losses(outs[1], reference, 1)
    assert (outs[0] / "summary.json").is_file()
    if rdzv == "static":
        assert _files(outs[1]) == ["ranks/rank1.jsonl"]


def _fake_scontrol(tmp: Path, lists: Dict[str, Sequence[str]]) -> Path:
    """A stand-in for Slurm's `scontrol show hostnames LIST`: one host per line for each known LIST."""
    d = tmp / "fakebin"
    d.mkdir(exist_ok=True)
    cases = "".join(f"  '{k}') printf '%s\\n' {' '.join(v)} ;;\n" for k, v in lists.items())
    exe = d / "scontrol"
    exe.write_text(f'#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\ncase "$3" in\n{cases}  *) exit 1 ;;\nesac\n')
    exe.chmod(0o755)
    return d


def _slurm_env(fakebin: Path, procid: int, localid: int, ntasks: int, **extra) -> Dict[str, str]:
    env = {k: v for k, v in _env().items() if not k.startswith(("SLURM_", "MASTER_", "RANK", "LOCAL_RANK",
                                                                  "WORLD_SIZE"))}
    env.update(PATH=f"{fakebin}:{env.get('PATH', '')}", SLURM_PROCID=str(procid), SLURM_LOCALID=str(localid),
               SLURM_NTASKS=str(ntasks), SLURM_JOB_NODELIST="gpu[017-018]", SLURM_JOB_ID="4242")
    env.update({k: str(v) for k, v in extra.items()})
    return env


_PRINT_ENV = [sys.executable, "-c", "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
              "('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')}))"]


def test_slurm_env_mapping(tmp_path):
    """launchers/slurm_env.sh with the variables srun sets for 2 nodes x 8 tasks: what each task gets."""
    fakebin = _fake_scontrol(tmp_path, {"gpu[017-018]": ["gpu017", "gpu018"], "gpu018": ["gpu018"]})
    seen = []
    for procid, localid in ((0, 0), (7, 7), (8, 0), (15, 7)):
        p = subprocess.run(["bash", str(SLURM_ENV), *_PRINT_ENV], env=_slurm_env(fakebin, procid, localid, 16),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        seen.append(json.loads(p.stdout))
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"]) for e in seen] == [
        ("0", "0", "16"), ("7", "7", "16"), ("8", "0", "16"), ("15", "7", "16")]
    assert {e["MASTER_ADDR"] for e in seen} == {"gpu017"}  # the first node, on every task
    assert {e["MASTER_PORT"] for e in seen} == {str(20000 + 4242 % 20000)}  # one port per job, all nodes
    # The step's own node list wins over the job's; explicit MASTER_ADDR/PORT are kept as given.
    p = subprocess.run(["bash", str(SLURM_ENV), *_PRINT_ENV], capture_output=True, text=True, timeout=60,
                       env=_slurm_env(fakebin, 1, 0, 2, SLURM_STEP_NODELIST="gpu018", MASTER_PORT=31234))
    assert p.returncode == 0 and json.loads(p.stdout)["MASTER_ADDR"] == "gpu018", p.stderr
    assert json.loads(p.stdout)["MASTER_PORT"] == "31234"
    # Outside srun, or with an unresolvable node list, it fails loudly instead of guessing localhost.
    bare = {k: v for k, v in _env().items() if not k.startswith("SLURM_")}
    p = subprocess.run(["bash", str(SLURM_ENV), "true"], env=bare, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "run it under srun" in p.stderr
    unknown = _slurm_env(fakebin, 0, 0, 2, SLURM_JOB_NODELIST="gpu[900-901]")  # scontrol fails on it
    p = subprocess.run(["bash", str(SLURM_ENV), *_PRINT_ENV], env=unknown, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stdout == ""


@pytest.mark.slow
def test_slurm_env_two_tasks_match_one_node(reference, shards, tmp_path):
    """Two srun tasks (one per "node") as Slurm would start them, through the documented wrapper."""
    fakebin = _fake_scontrol(tmp_path, {"gpu[017-018]": ["127.0.0.1", "127.0.0.2"]})
    out = tmp_path / "shared" / "run"
    port = free_port()
    cmd = ["bash", str(SLURM_ENV), sys.executable, LAUNCHER, *TRAIN, f"data.shards={shards}", f"out_dir={out}"]
    specs = [(cmd, tmp_path / f"task{r}.log", _slurm_env(fakebin, r, 0, 2, MASTER_PORT=port)) for r in (0, 1)]
    with nodes(specs) as started:
        rcs = _wait_all(started)
        assert rcs == [0, 0], _logs(started)
    assert_same_losses(out, reference, 0)
    assert_same_losses(out, reference, 1)
