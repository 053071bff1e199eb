"""Declarative sweep file -> a list of runs with stable ids.

A sweep is architectures x depths x training budgets x seeds. Each run starts from a preset chosen
per (arch, depth) (default `{arch}_d{depth}`, which carries the per-depth recipe) plus dotted
overrides. The run id is readable and a pure function of the grid point, so expanding the same file
again (another day, another machine) names the same runs and finds their outputs.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

ARCHS = ("var", "mvar")
BUDGET_KINDS = ("epochs", "steps", "images", "recipe")
IMAGENET_TRAIN_IMAGES = 1_281_167
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]*$")


class SweepError(ValueError):
    """A malformed sweep file; `field` is the dotted path of the offending entry."""

    def __init__(self, field: str, message: str, source: str = "sweep"):
        self.field = field
        super().__init__(f"{source}: field '{field}': {message}")


@dataclass(frozen=True)
class Budget:
    name: str                 # slug used in run ids
    kind: str                 # one of BUDGET_KINDS
    value: float = 0          # epochs / steps / images; unused for "recipe"
    overrides: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Hardware:
    peak_tflops: float = 989.0   # per accelerator, dense bf16 (H100 SXM)
    mfu: float = 0.40            # assumed model FLOPs utilisation for the GPU-hour estimate
    name: str = "H100"


@dataclass
class Sweep:
    name: str
    out_root: str
    archs: Tuple[str, ...]
    depths: Tuple[int, ...]
    budgets: Tuple[Budget, ...]
    seeds: Tuple[int, ...] = (0,)
    preset: str = "{arch}_d{depth}"
    head_dim: int = 0                        # >0: width = head_dim * depth, num_heads = depth
    per_depth: Dict[int, Tuple[str, ...]] = field(default_factory=dict)
    overrides: Tuple[str, ...] = ()
    train_command: Tuple[str, ...] = ("{python}", "{repo}/launchers/train.py")
    eval_command: Tuple[str, ...] = ()       # run after training with {run_dir}/{config} filled in; () = none
    dataset_images: int = IMAGENET_TRAIN_IMAGES
    hardware: Hardware = field(default_factory=Hardware)
    entropy: Optional[float] = None          # token entropy (nats) for reducible loss; None = not known
    source: str = "sweep"

    def runs(self) -> List["RunSpec"]:
        return expand(self)


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    arch: str
    depth: int
    budget: str
    seed: int
    preset: str
    overrides: Tuple[str, ...]   # everything that defines the run, in application order
    run_dir: str

    @property
    def fingerprint(self) -> str:
        """Hash of what defines the training (preset + overrides), independent of where it is written."""
        keep = [o for o in self.overrides if not o.startswith(("out_dir=", "name="))]
        return hashlib.sha256(json.dumps([self.preset, keep]).encode()).hexdigest()[:16]

    def config(self):
        from mvar_dist.config import load_config

        return load_config(self.preset, self.overrides)

    def to_dict(self) -> Dict[str, Any]:
        return {"run_id": self.run_id, "arch": self.arch, "depth": self.depth, "budget": self.budget,
                "seed": self.seed, "preset": self.preset, "overrides": list(self.overrides),
                "run_dir": self.run_dir, "fingerprint": self.fingerprint}


def _shipped_sweeps_dir() -> Path:
    from mvar_dist.config import configs_dir

    return configs_dir() / "sweeps"


def list_sweeps() -> List[str]:
    """Names of the shipped sweep files (`configs/sweeps/*.yaml`, installed in `mvar_dist.configs`)."""
    return sorted(p.stem for p in _shipped_sweeps_dir().glob("*.yaml"))


def find_sweep(path) -> Path:
    """A YAML file, or a shipped sweep named `cpu_demo`, `sweeps/cpu_demo` or `configs/sweeps/cpu_demo.yaml`
    (resolved against the shipped folder from any working directory, like preset names)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_absolute() and p.parent.parts in ((), ("sweeps",), ("configs", "sweeps")):
        for cand in (_shipped_sweeps_dir() / p.name, _shipped_sweeps_dir() / f"{p.name}.yaml"):
            if cand.is_file():
                return cand
    raise SweepError("path", f"no sweep file '{path}' (give a YAML path or a shipped sweep: "
                             f"{', '.join(list_sweeps()) or 'none found'})", source=str(path))


def load_sweep(path, out_root: Optional[str] = None) -> Sweep:
    """Read and validate a sweep YAML (a path, or a shipped sweep's name; see `find_sweep`)."""
    p = find_sweep(path)
    with open(p) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise SweepError("(yaml)", f"not valid YAML: {exc}", source=str(p)) from None
    sweep = parse_sweep(data, source=str(p))
    if out_root:
        sweep.out_root = out_root
    return sweep


_KEYS = ("name", "out_root", "archs", "depths", "budgets", "seeds", "preset", "head_dim", "per_depth",
         "overrides", "train_command", "eval_command", "dataset_images", "hardware", "entropy")


def _preset(preset: Any, err) -> str:
    """The run-name template; it must format with {arch} and {depth} only."""
    if not isinstance(preset, str):
        raise err("preset", f"must be a string template, got {preset!r}")
    try:
        preset.format(arch="var", depth=1)
    except (KeyError, IndexError, ValueError) as exc:
        raise err("preset", f"bad template {preset!r} (placeholders: {{arch}}, {{depth}}): {exc}") from None
    return preset


def _hardware(hw: Any, err) -> Hardware:
    """The `hardware:` section (peak TFLOP/s, MFU, name) the compute estimates use."""
    if not isinstance(hw, Mapping) or set(hw) - {"peak_tflops", "mfu", "name"}:
        raise err("hardware", "must be a mapping with peak_tflops, mfu, name")
    hardware = Hardware(peak_tflops=_pos_num(hw.get("peak_tflops", 989.0), "hardware.peak_tflops", err),
                        mfu=_pos_num(hw.get("mfu", 0.40), "hardware.mfu", err), name=str(hw.get("name", "H100")))
    if hardware.mfu > 1:
        raise err("hardware.mfu", f"is a fraction in (0, 1], got {hardware.mfu}")
    return hardware


def parse_sweep(data: Mapping[str, Any], source: str = "sweep") -> Sweep:
    def err(fld, msg):
        return SweepError(fld, msg, source)

    if not isinstance(data, Mapping):
        raise err("(top)", f"must be a mapping, got {type(data).__name__}")
    for k in data:
        if k not in _KEYS:
            raise err(str(k), f"unknown key (valid: {', '.join(_KEYS)})")
    for req in ("name", "archs", "depths"):
        if req not in data:
            raise err(req, "is required")
    name = _slug(data["name"], "name", err)
    archs = tuple(_list(data["archs"], "archs", err))
    for i, a in enumerate(archs):
        if a not in ARCHS:
            raise err(f"archs[{i}]", f"must be one of {list(ARCHS)}, got {a!r}")
    depths = tuple(_pos_int(d, f"depths[{i}]", err) for i, d in enumerate(_list(data["depths"], "depths", err)))
    seeds = tuple(_int(s, f"seeds[{i}]", err) for i, s in enumerate(_list(data.get("seeds", [0]), "seeds", err)))
    budgets = tuple(_budget(b, f"budgets[{i}]", err)
                    for i, b in enumerate(_list(data.get("budgets", [{"name": "recipe", "recipe": True}]),
                                                "budgets", err)))
    for what, items in (("archs", archs), ("depths", depths), ("seeds", seeds),
                        ("budgets", [b.name for b in budgets])):
        if len(set(items)) != len(items):
            raise err(what, f"has duplicate entries: {list(items)}")
    preset = _preset(data.get("preset", "{arch}_d{depth}"), err)
    per_depth_raw = data.get("per_depth", {}) or {}
    if not isinstance(per_depth_raw, Mapping):
        raise err("per_depth", "must map a depth to a list of overrides")
    per_depth = {}
    for d, ov in per_depth_raw.items():
        dd = _pos_int(d, f"per_depth.{d}", err)
        per_depth[dd] = _overrides(ov, f"per_depth.{d}", err)
    hardware = _hardware(data.get("hardware", {}) or {}, err)
    entropy = data.get("entropy")
    if entropy is not None:
        entropy = _pos_num(entropy, "entropy", err)
    head_dim = data.get("head_dim", 0)
    if head_dim:
        head_dim = _pos_int(head_dim, "head_dim", err)
    train_command = _command(data.get("train_command", ["{python}", "{repo}/launchers/train.py"]), "train_command", err)
    if not train_command:
        raise err("train_command", "must not be empty")
    return Sweep(
        name=name, out_root=str(data.get("out_root") or f"outputs/sweeps/{name}"), archs=archs, depths=depths,
        budgets=budgets, seeds=seeds, preset=preset, head_dim=head_dim, per_depth=per_depth,
        overrides=_overrides(data.get("overrides", []), "overrides", err), train_command=train_command,
        eval_command=_command(data.get("eval_command", []) or [], "eval_command", err),
        dataset_images=_pos_int(data.get("dataset_images", IMAGENET_TRAIN_IMAGES), "dataset_images", err),
        hardware=hardware, entropy=entropy, source=source)


def expand(sweep: Sweep) -> List[RunSpec]:
    """Every grid point as a RunSpec, in a fixed order (arch, depth, budget, seed)."""
    runs = []
    for arch in sweep.archs:
        for depth in sweep.depths:
            preset = sweep.preset.format(arch=arch, depth=depth)
            for budget in sweep.budgets:
                for seed in sweep.seeds:
                    run_id = f"{arch}-d{depth}-{budget.name}-s{seed}"
                    run_dir = str(Path(sweep.out_root) / "runs" / run_id)
                    ov = [f"model.arch={arch}", f"model.depth={depth}"]
                    if sweep.head_dim:
                        ov += [f"model.width={sweep.head_dim * depth}", f"model.num_heads={depth}"]
                    ov += list(sweep.per_depth.get(depth, ()))
                    ov += _budget_overrides(budget)
                    ov += list(sweep.overrides)
                    ov += [f"seed={seed}", f"name={sweep.name}-{run_id}", f"out_dir={run_dir}"]
                    if budget.kind == "images":  # steps depend on the run's global batch, known only now
                        gb = _load(preset, ov, run_id, sweep).optim.global_batch
                        ov.append(f"optim.max_steps={math.ceil(budget.value / gb)}")
                    runs.append(RunSpec(run_id, arch, depth, budget.name, seed, preset, tuple(ov), run_dir))
    return runs


def validate_runs(sweep: Sweep) -> List[Tuple[RunSpec, Any]]:
    """Build every run's RunConfig; a bad preset or override raises SweepError naming run and key."""
    return [(spec, _load(spec.preset, spec.overrides, spec.run_id, sweep)) for spec in expand(sweep)]


def _load(preset: str, overrides: Sequence[str], run_id: str, sweep: Sweep):
    from mvar_dist.config import ConfigError, load_config

    try:
        return load_config(preset, overrides)
    except ConfigError as exc:
        raise SweepError(f"run {run_id}: {exc.key}", str(exc), sweep.source) from None


def planned_steps(cfg, dataset_images: int) -> int:
    """Optimizer steps a run will take: max_steps if set, else epochs x ceil(dataset / global batch)."""
    if cfg.optim.max_steps > 0:
        return cfg.optim.max_steps
    return int(cfg.optim.epochs * math.ceil(dataset_images / cfg.optim.global_batch))


def _budget_overrides(b: Budget) -> List[str]:
    if b.kind == "epochs":
        ov = [f"optim.epochs={int(b.value)}", "optim.max_steps=0"]
    elif b.kind == "steps":
        ov = [f"optim.max_steps={int(b.value)}"]
    else:
        ov = []
    return ov + list(b.overrides)


def _budget(b, where, err) -> Budget:
    if not isinstance(b, Mapping):
        raise err(where, f"must be a mapping like {{name: e10, epochs: 10}}, got {b!r}")
    unknown = set(b) - {"name", "overrides", *BUDGET_KINDS}
    if unknown:
        raise err(f"{where}.{sorted(unknown)[0]}", f"unknown key (valid: name, overrides, {', '.join(BUDGET_KINDS)})")
    kinds = [k for k in BUDGET_KINDS if k in b]
    if len(kinds) != 1:
        raise err(where, f"needs exactly one of {list(BUDGET_KINDS)}, got {kinds or 'none'}")
    kind = kinds[0]
    value = 0
    if kind != "recipe":
        value = _pos_int(b[kind], f"{where}.{kind}", err)
    name = _slug(b.get("name", f"{kind[0]}{value}" if kind != "recipe" else "recipe"), f"{where}.name", err)
    return Budget(name, kind, value, _overrides(b.get("overrides", []), f"{where}.overrides", err))


def _list(v, where, err) -> list:
    if not isinstance(v, (list, tuple)) or not v:
        raise err(where, f"must be a non-empty list, got {v!r}")
    return list(v)


def _int(v, where, err) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise err(where, f"must be an int, got {v!r}")
    return v


def _pos_int(v, where, err) -> int:
    if isinstance(v, str) and v.isdigit():
        v = int(v)
    if _int(v, where, err) <= 0:
        raise err(where, f"must be > 0, got {v}")
    return v


def _pos_num(v, where, err) -> float:
    if isinstance(v, str):
        try:
            v = float(v)  # YAML 1.1 reads "1e3" as a string
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise err(where, f"must be a number > 0, got {v!r}")
    return float(v)


def _slug(v, where, err) -> str:
    if not isinstance(v, str) or not _SLUG.match(v):
        raise err(where, f"must be a name of letters, digits, '_' or '.', got {v!r}")
    return v


def _overrides(v, where, err) -> Tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)):
        raise err(where, f"must be a list of 'section.key=value' strings, got {v!r}")
    for i, o in enumerate(v):
        if not isinstance(o, str) or "=" not in o or o.startswith("="):
            raise err(f"{where}[{i}]", f"must look like 'section.key=value', got {o!r}")
    return tuple(v)


def _command(v, where, err) -> Tuple[str, ...]:
    if isinstance(v, str):
        import shlex

        v = shlex.split(v)
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise err(where, f"must be a list of strings (argv), got {v!r}")
    return tuple(v)
