"""Scaling sweeps, part 2: the runner (real subprocesses of a stand-in trainer that writes the
trainer's documented layout), skip-if-done, the results table, fits from it and the plots."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mvar_dist.scaling.results import read_table, write_table
from mvar_dist.scaling.runner import LocalRunner, format_plan, plan
from mvar_dist.scaling.sweep import load_sweep

# A stand-in for launchers/train.py with the same argv and outputs: metrics.jsonl, checkpoints/step_*/COMPLETE,
# summary.json last. Losses follow L = E + A/N^a + B/D^b; FAKE_CRASH_RUN makes one run die half-way.
FAKE_TRAIN = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    from mvar_dist.config import load_config
    from mvar_dist.scaling.params import count_params
    args = sys.argv[1:]
    cfg = load_config(args[args.index("--config") + 1], [a for a in args if "=" in a and not a.startswith("--")])
    out = Path(cfg.out_dir)
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(out.name + "\\n")
    N = count_params(cfg, prefer_model=False).total
    ckpts = sorted(out.glob("checkpoints/step_*/COMPLETE"))
    start = int(ckpts[-1].parent.name[5:]) if ckpts else 0
    L = sum(p * p for p in cfg.tokenizer.patch_nums)
    steps = cfg.optim.max_steps
    for step in range(start + 1, steps + 1):
        if os.environ.get("FAKE_CRASH_RUN") == out.name and step > steps // 2:
            sys.exit(3)
        images = step * cfg.optim.global_batch
        loss = 1.5 + 30.0 / N ** 0.3 + 20.0 / (images * L) ** 0.35
        rec = {"step": step, "epoch": 0, "images_seen": images, "tokens_seen": images * L,
               "train_flops": 6.0 * N * images * L, "loss": loss, "L_mean": loss, "L_tail": loss * 1.1,
               "acc_mean": 100 * (0.9 - 0.1 * loss), "acc_tail": 100 * (0.85 - 0.1 * loss), "wall_time": 0.1 * step}
        for si in range(len(cfg.tokenizer.patch_nums)):
            rec[f"loss_scale_{si}"] = loss * (0.8 + 0.1 * si)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\\n")
        if step % cfg.ckpt.every_steps == 0 or step == steps:
            d = out / "checkpoints" / f"step_{step:08d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "meta.json").write_text(json.dumps({"step": step}))
            (d / "COMPLETE").write_text("")
    (out / "summary.json").write_text(json.dumps({"status": "finished", "steps": steps,
                                                  "flops_per_image": 6.0 * N * L, "num_params": N}))
''')


@pytest.fixture()
def sweep_file(tmp_path, monkeypatch):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "invocations.txt"))
    spec = {"name": "t", "out_root": str(tmp_path / "sweep"), "archs": ["var", "mvar"], "depths": [1, 2, 3],
            "preset": "{arch}_tiny", "head_dim": 32, "budgets": [{"name": "s12", "steps": 12}],
            "overrides": ["ckpt.every_steps=4"], "dataset_images": 400,
            "train_command": ["{python}", str(tmp_path / "fake_train.py")]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _invocations(tmp_path):
    p = tmp_path / "invocations.txt"
    return p.read_text().split() if p.exists() else []


def test_rerun_of_half_finished_sweep_runs_only_missing(sweep_file, tmp_path, monkeypatch):
    sweep = load_sweep(sweep_file)
    runs = sweep.runs()
    monkeypatch.setenv("FAKE_CRASH_RUN", runs[1].run_id)
    first = LocalRunner(sweep, log=lambda m: None).run(runs[:3])
    assert first.ran == [runs[0].run_id, runs[2].run_id] and list(first.failed) == [runs[1].run_id]
    assert [r.status for r in plan(sweep)][:4] == ["complete", "partial", "complete", "todo"]
    monkeypatch.delenv("FAKE_CRASH_RUN")
    (tmp_path / "invocations.txt").unlink()
    second = LocalRunner(sweep, log=lambda m: None).run()
    assert _invocations(tmp_path) == [r.run_id for r in runs[1:2] + runs[3:]]
    assert second.skipped == [runs[0].run_id, runs[2].run_id] and second.ok
    # The crashed run resumed from its last checkpoint: every step logged exactly once after the resume point.
    steps = [json.loads(line)["step"] for line in open(f"{runs[1].run_dir}/metrics.jsonl")]
    assert sorted(set(steps)) == list(range(1, 13))
    third = LocalRunner(sweep, log=lambda m: None).run()
    assert third.ran == [] and len(third.skipped) == len(runs)


def test_complete_run_with_changed_config_is_reported_not_reused(sweep_file, tmp_path):
    sweep = load_sweep(sweep_file)
    LocalRunner(sweep, log=lambda m: None).run(sweep.runs()[:1])
    sweep.overrides = sweep.overrides + ("optim.tblr=5e-4",)
    report = LocalRunner(sweep, log=lambda m: None).run(sweep.runs()[:1])
    assert report.changed == [sweep.runs()[0].run_id] and not report.ok


def test_results_table_fits_and_plots(sweep_file, tmp_path):
    sweep = load_sweep(sweep_file)
    assert LocalRunner(sweep, log=lambda m: None).run().ok
    path = write_table(sweep)
    first = path.read_bytes()
    assert write_table(sweep).read_bytes() == first  # rebuilt: identical
    path.unlink()
    assert write_table(sweep).read_bytes() == first
    rows = read_table(path)
    assert len(rows) == 6 * 3  # checkpoints at steps 4, 8, 12 of each of 6 runs
    final = [r for r in rows if r["is_final"]]
    assert len(final) == 6 and all(r["step"] == 12 for r in final)
    r = final[0]
    assert r["checkpoint"] == f"{r['run_id']}/step_00000012"
    assert r["err_mean"] == pytest.approx(1 - (0.9 - 0.1 * r["L_mean"]))
    assert r["params_total"] > r["params_non_embedding"] > 0
    assert {"loss_scale_0", "loss_scale_3", "fid", "params_non_embedding", "train_flops"} <= set(rows[0])

    from mvar_dist.scaling.analyze import write_fits
    from mvar_dist.scaling.plots import plot_all
    from mvar_dist.scaling.results import load_curves

    fits = write_fits(path, tmp_path / "fits.json", n_boot=20, chinchilla_boot=2, chinchilla_starts=4)
    assert fits["var/L_mean~params/s12"].alpha < 0 and fits["var/L_mean~params/s12"].pearson_r < -0.99
    assert fits["mvar/L_mean~compute_frontier"].alpha < 0
    assert abs(fits["var/L_mean~chinchilla(N,D)"].E - 1.5) < 0.1
    saved = json.loads((tmp_path / "fits.json").read_text())
    assert saved["meta"]["table_sha256"] and saved["var/L_tail~params/s12"]["data_hash"]

    out = plot_all(rows, load_curves(sweep), fits, tmp_path / "plots")
    assert sorted(p.name for p in out) == sorted(f"{n}.{e}" for n in ("loss_vs_params", "loss_vs_compute",
                                                                         "fid_vs_compute", "per_scale_loss")
                                                  for e in ("png", "pdf"))
    for p in out:
        head = p.read_bytes()[:8]
        assert p.stat().st_size > 5000 and head[:4] in (b"\x89PNG", b"%PDF")


def test_results_table_follows_a_non_default_ckpt_dir(sweep_file, tmp_path):
    """A run whose ckpt.dir is elsewhere (its config.yaml says where) still gets its checkpoint rows."""
    import shutil

    from mvar_dist.config import load_config, save_config

    sweep = load_sweep(sweep_file)
    assert LocalRunner(sweep, log=lambda m: None).run().ok
    spec = sweep.runs()[0]
    run = Path(spec.run_dir)
    elsewhere = tmp_path / "disk2" / spec.run_id
    elsewhere.parent.mkdir()
    shutil.move(str(run / "checkpoints"), str(elsewhere))
    (run / "summary.json").unlink()  # rows now come from the checkpoints alone
    save_config(load_config("mvar_tiny", [f"out_dir={run}", f"ckpt.dir={elsewhere}"]), run)
    rows = [r for r in read_table(write_table(sweep)) if r["run_id"] == spec.run_id]
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert rows[-1]["checkpoint"] == f"{spec.run_id}/step_00000012"


def test_launcher_plan_and_run(sweep_file, tmp_path, capsys):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "launchers"))
    try:
        import scaling_sweep
    finally:
        sys.path.pop(0)
    assert scaling_sweep.main(["plan", str(sweep_file)]) == 0
    out = capsys.readouterr().out
    assert "var-d1-s12-s0" in out and "H100-h" in out and "still to run: 6 runs" in out
    assert scaling_sweep.main(["run", str(sweep_file), "--n-boot", "10"]) == 0
    root = tmp_path / "sweep"
    assert (root / "results.csv").is_file() and (root / "fits.json").is_file()
    assert (root / "plots" / "loss_vs_compute.pdf").stat().st_size > 0
    sweep = load_sweep(sweep_file)
    assert "still to run: 0 runs" in format_plan(sweep, plan(sweep))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\narchs: [var]\ndepths: [1]\nbudgets: [{name: x, epochs: -2}]\n")
    assert scaling_sweep.main(["plan", str(bad)]) == 2
    assert "budgets[0].epochs" in capsys.readouterr().err
