"""Helpers for test_documented_commands.py: extract the commands from the documents, describe a cheap
runnable form of one, and run such forms (alone, or many `python ...` forms in one interpreter)."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest


REPO = Path(__file__).resolve().parents[2]
# docs/LOG.md is a dated record of what was run and measured, not instructions: it keeps its history.
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "LOG.md")]
PROGRAMS = {"python", "pip", "make", "deepspeed", "torchrun", "ray", "tensorboard", "bash", "pytest", "git"}
SHELLS = {"bash", "sh", "shell", "console"}
_FENCE = re.compile(r"^\s*```\s*([A-Za-z]*)")
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")
REPO_PATH = re.compile(r"^(configs|launchers|benchmarks|tests|docs|mvar_dist|\.ci)/[^\s\[\]<>]*$")
SCRIPT = re.compile(r"\b((?:launchers|benchmarks)/[A-Za-z0-9_]+\.py)\b")


def normalise(command: str) -> str:
    """Tokens joined by one space, trailing comment dropped, `.venv/bin/X` and `python3` spelled `X`/`python`."""
    toks = shlex.split(command, comments=True)
    i = next((k for k, t in enumerate(toks) if not _ENV.match(t)), len(toks))
    if i < len(toks):
        prog = toks[i].rsplit("/", 1)[-1] if toks[i].startswith((".venv/bin/", "/")) else toks[i]
        toks[i] = "python" if prog == "python3" else prog
    return " ".join(toks)


def _program(command: str) -> str:
    return next((t for t in command.split() if not _ENV.match(t)), "")


def extract_commands(text: str) -> List[str]:
    """Commands in shell code blocks (continuations joined) and inline spans starting with a known program."""
    found, lang, pending, prose = [], None, "", []
    for line in text.splitlines():
        fence = _FENCE.match(line)
        if fence:
            lang = fence.group(1).lower() if lang is None else None
            continue
        if lang is None:
            prose.append(line)
        elif lang in SHELLS:
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            command, pending = pending.strip(), ""
            if command and not command.startswith("#"):
                found.append(normalise(command))
    for span in _INLINE.findall("\n".join(prose)):
        try:
            command = normalise(span)
        except ValueError:  # unbalanced quotes: not a command
            continue
        if _program(command) in PROGRAMS and len(command.split()) >= 2:
            found.append(command)
    return found


def documented(docs: Sequence[Path]) -> Dict[str, List[str]]:
    """{normalised command: [documents showing it]}."""
    out: Dict[str, List[str]] = {}
    for doc in docs:
        for command in extract_commands(doc.read_text(encoding="utf-8")):
            out.setdefault(command, []).append(doc.name)
    return out


@dataclass(frozen=True)
class Cheap:
    """A cheap runnable form: argv (`{python}`, `{bin}`, `{tmp}` filled in), run in the repo or in a temp
    folder outside it, must exit with `rc` and print every string of `expect`."""
    argv: Tuple[str, ...]
    expect: Tuple[str, ...] = ()
    rc: int = 0
    cwd: str = "repo"
    slow: bool = False

    @property
    def id(self) -> str:
        return " ".join(self.argv).replace("{python} ", "") + ("" if self.cwd == "repo" else " [other cwd]")


def _strings(expect) -> Tuple[str, ...]:
    return (expect,) if isinstance(expect, str) else tuple(expect)


def py(*args: str, expect=(), cwd="repo", slow=False) -> Cheap:
    return Cheap(("{python}", *args), _strings(expect), cwd=cwd, slow=slow)


def tool(name: str, *args: str, expect=(), slow=True) -> Cheap:
    """A console script installed next to the interpreter (deepspeed, torchrun, ray, tensorboard)."""
    return Cheap((f"{{bin}}/{name}", *args), _strings(expect), slow=slow)


def make_n(*args: str, expect=()) -> Cheap:
    """`make -n`: prints the recipe, runs nothing (no recipe line uses $(MAKE) or `+`)."""
    return Cheap(("make", "-n", *args), _strings(expect))


def config(preset: str, *overrides: str, expect=()) -> Cheap:
    """Resolves the preset with the documented overrides: a typo in a key or preset name fails."""
    return py("-m", "mvar_dist", "config", preset, *overrides, expect=("name: ", *_strings(expect)))


# Runs several `python SCRIPT args` / `python -m MODULE args` in one subprocess (torch is imported once, not
# once per --help): each as __main__ with its own argv, sys.path[0] set as `python SCRIPT` sets it, output
# and exit code captured. Prints one JSON list of {rc, out}.
_DRIVER = r"""
import contextlib, io, json, os, runpy, sys, traceback
results = []
for args in json.loads(sys.argv[1]):
    buf, rc = io.StringIO(), 0
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            if args[0] == "-m":
                sys.argv = [args[1], *args[2:]]
                runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(args)
                sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
                runpy.run_path(args[0], run_name="__main__")
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        rc = 1
        buf.write(traceback.format_exc())
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    results.append({"rc": rc, "out": buf.getvalue()})
sys.__stdout__.write("\n@@RESULTS@@" + json.dumps(results))
"""


def run_batch(forms: Sequence[Cheap]) -> List[dict]:
    """Runs `python SCRIPT|-m MODULE args` forms (cwd: the repo) in one subprocess; one {rc, out} per form."""
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps([list(c.argv[1:]) for c in forms])],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "@@RESULTS@@" in proc.stdout, f"driver failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.rsplit("@@RESULTS@@", 1)[1])


def fill(arg: str, tmp: Path) -> str:
    return arg.replace("{python}", sys.executable).replace("{bin}", str(Path(sys.executable).parent)).replace(
        "{tmp}", str(tmp))


def make_env() -> Dict[str, str]:
    """The environment without an outer make's flags (`make test` runs these tests under make)."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}


def run_alone(cheap: Cheap, tmp: Path) -> subprocess.CompletedProcess:
    if cheap.argv[0] == "make" and shutil.which("make") is None:
        pytest.skip("make is not installed")
    cwd = REPO if cheap.cwd == "repo" else tmp
    return subprocess.run([fill(a, tmp) for a in cheap.argv], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=make_env() if cheap.argv[0] == "make" else None)
