"""The checkpoint-watching loop both evaluation services run (mvar_dist/eval/watch.py), in one process."""
from mvar_dist.eval.watch import one_pass, watch


def test_watch_runs_the_passes_and_says_which_root_is_not_there_yet(tmp_path):
    present, absent = tmp_path / "runs", tmp_path / "later"
    present.mkdir()
    logs, calls = [], []
    watch(lambda: calls.append(1) or [], [str(present), str(absent)], poll_s=0.01, log=logs.append,
          prefix="eval", max_passes=2)
    assert len(calls) == 2 and len(logs) == 2
    assert f"{absent} not there yet: waiting for it to appear" in logs[0] and f"{present} not there" not in logs[0]
    absent.mkdir()
    logs.clear()
    watch(lambda: [], [str(present), str(absent)], poll_s=0.01, log=logs.append, prefix="eval", max_passes=1)
    assert logs and "not there yet" not in logs[0] and logs[0].startswith("[eval] nothing new under")


def test_a_pass_that_found_work_is_not_reported_as_idle(tmp_path):
    logs = []
    watch(lambda: [{"row": 1}], [str(tmp_path)], poll_s=0.01, log=logs.append, prefix="eval", max_passes=1)
    assert logs == []
    assert one_pass(lambda: [1, 2, 3], lambda i: {"i": i} if i != 2 else None) == [{"i": 1}, {"i": 3}]
