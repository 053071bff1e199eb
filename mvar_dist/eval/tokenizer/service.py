"""The evaluation service's tokenizer kind: watch tokenizer-trainer checkpoint roots and evaluate each
complete step folder once.

A root is a step folder, a checkpoint folder holding `step_XXXXXXXX/` folders (the trainer's
`<out_dir>/ckpt`), a run folder (`<root>/ckpt/step_*`), or a folder of such runs. A step folder counts
when it carries the COMPLETE marker and meta.json of kind `var-vqvae-tokenizer-train` (half-written
`.tmp.step_*` folders and other kinds are ignored). Each pass evaluates the folders whose (checkpoint
id, protocol hash) is not yet in `<work_dir>/tokenizer_results.csv`, so a restart repeats nothing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional

from mvar_dist.distributed import rank_world
from mvar_dist.eval.watch import one_pass, watch
from mvar_dist.runs.layout import META, TOKENIZER_CKPT_SUBDIR, TOKENIZER_KIND, is_complete, list_checkpoints

from .evaluate import EvalImages, MetricNets, TokEvalOptions, evaluate_tokenizer, load_tokenizer, protocol_hash
from .results import TokenizerResultsTable


def _is_tok_step(folder: Path) -> bool:
    if not is_complete(folder):
        return False
    try:
        return json.loads((folder / META).read_text()).get("kind") == TOKENIZER_KIND
    except (OSError, ValueError):
        return False


def find_tokenizer_checkpoints(root) -> List[Path]:
    """Complete tokenizer step folders under a root (see the module docstring), oldest step first per run."""
    root = Path(root)
    if not root.is_dir():
        return []
    if _is_tok_step(root):
        return [root]
    out: List[Path] = []
    for ckpt_dir in (root, root / TOKENIZER_CKPT_SUBDIR):
        out += [p for p in list_checkpoints(ckpt_dir) if _is_tok_step(p)]
    if not out:  # a folder of runs
        for run in sorted(p for p in root.iterdir() if p.is_dir()):
            for ckpt_dir in (run, run / TOKENIZER_CKPT_SUBDIR):
                out += [p for p in list_checkpoints(ckpt_dir) if _is_tok_step(p)]
    return out


class TokenizerEvalService:
    def __init__(self, roots: List[str], work_dir: str, opts: TokEvalOptions, poll_s: float = 60.0,
                 log: Callable[[str], None] = print, progress: bool = False):
        self.roots, self.opts, self.poll_s, self.log, self.progress = list(roots), opts, poll_s, log, progress
        if not opts.images or not Path(opts.images).is_dir():
            raise FileNotFoundError(f"image folder not found: {opts.images!r} (give a held-out ImageFolder dir)")
        self.table = TokenizerResultsTable(Path(work_dir))
        self.nets = MetricNets(opts)  # loads (and checks) the LPIPS / Inception files once
        for note in self.nets.notes():
            log(f"[tok-eval] {note}")
        self.failed: Dict[str, str] = {}

    def pending(self) -> List[Path]:
        out: List[Path] = []
        for root in self.roots:
            out += find_tokenizer_checkpoints(root)
        return out

    def run_once(self) -> List[Dict[str, object]]:
        """Evaluate every new tokenizer checkpoint; under a process group rank 0 decides which and every rank
        scores its share of the images (evaluate_tokenizer); rows are returned on rank 0."""
        return one_pass(self.todo, self._evaluate_folder)

    def _evaluate_folder(self, folder: Path) -> Optional[Dict[str, object]]:
        rank0 = rank_world()[0] == 0
        return evaluate_tokenizer(load_tokenizer(str(folder)), self.opts, self.table, self.nets,
                                  self.progress and rank0, self.log if rank0 else (lambda _msg: None))

    def todo(self) -> List[Path]:
        """Checkpoints without a row for this protocol; unreadable ones are logged once and skipped."""
        out = []
        for folder in self.pending():
            cid = str(folder.resolve())
            try:
                tok = load_tokenizer(str(folder))
                data = EvalImages(self.opts.images, tok.vae.resolution, self.opts.resize_ratio)
                if not self.table.has(cid, protocol_hash(self.opts, data, self.nets)[0]):
                    out.append(folder)
            except (ValueError, FileNotFoundError) as e:
                if self.failed.get(cid) != str(e):
                    self.failed[cid] = str(e)
                    self.log(f"[tok-eval] {cid}: skipped: {e}")
        return out

    def watch(self, max_passes: Optional[int] = None) -> None:
        watch(self.run_once, self.roots, self.poll_s, self.log, "tok-eval", max_passes)
