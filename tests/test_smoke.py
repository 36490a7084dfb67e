from tests.helpers import TINY_DIGITS, read_records, read_summary, tiny_run


def test_ew_trains_end_to_end(tmp_path):
    (outcome,) = tiny_run("digits_tasks", "ew", tmp_path, TINY_DIGITS)
    assert outcome.status == "complete", outcome.reason
    summary = read_summary(outcome.run_dir)
    assert summary["status"] == "complete"
    splits = [r["split"] for r in read_records(outcome.run_dir)]
    assert splits == ["train", "val", "test"]
