"""For scripts whose file name is also a stdlib module (`launchers/tokenize.py`, `benchmarks/tokenize.py`).

Run as a script, such a file's folder is `sys.path[0]`, so `inspect`/`linecache` would import the
script instead of the stdlib module: `unshadow` drops the folder first. Imported by a sibling script
as `tokenize`, the file must *be* the stdlib module: `become_stdlib` executes the real one in its place.
"""
import os
import sys
import sysconfig


def unshadow(script_file: str) -> None:
    here = os.path.dirname(os.path.abspath(script_file))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]


def become_stdlib(name: str, module_globals: dict) -> None:
    path = os.path.join(sysconfig.get_paths()["stdlib"], f"{name}.py")
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), path, "exec"), module_globals)
