import io
import os
import subprocess
import sys
import textwrap

from protoseg.logs import collect_warnings, format_warnings, summarise_warnings, warnings_markdown

SCRIPT = textwrap.dedent(
    """
    import logging, sys, warnings
    from protoseg.logs import log_to_file
    log = log_to_file(sys.argv[1])
    log.info("catalogued 12 images")
    sys.stderr.write("\\rmasks:  50%|#####     | 1/2 [00:00<00:00]")  # a tqdm bar, no newline
    logging.getLogger("protoseg.masks").warning("day1t1xy1 z12: the classical mask has no cells")
    warnings.warn("results/models/all-bce/checkpoints/epoch-003.pt: unreadable; skipped")
    log.error("not a warning")
    """
)


def write_log(path):
    """A log written the way the workflow's scripts write theirs (protoseg.logs.log_to_file)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True, env=env)


def test_warnings_are_found_in_the_logs_scripts_write(tmp_path):
    write_log(tmp_path / "logs" / "masks" / "day1t1xy1.log")
    write_log(tmp_path / "logs" / "warnings" / "warnings.log")  # the summary's own: skipped
    table = collect_warnings(tmp_path / "logs", exclude=("warnings",))
    assert table["step"].tolist() == ["masks", "masks"]
    assert table["message"].tolist() == [
        "day1t1xy1 z12: the classical mask has no cells",
        # logging.captureWarnings' "file.py:7: UserWarning: " prefix is dropped
        "results/models/all-bce/checkpoints/epoch-003.pt: unreadable; skipped",
    ]
    assert table["logger"].tolist() == ["protoseg.masks", "py.warnings"]
    summary = format_warnings(table)
    assert summary.startswith("protoseg: 2 warnings in the logs")
    assert "[masks] day1t1xy1 z12: the classical mask has no cells" in summary
    markdown = warnings_markdown(table)
    assert "## masks" in markdown and "epoch-003.pt: unreadable" in markdown


def test_summary_separates_this_run_from_earlier_ones(tmp_path):
    old = tmp_path / "logs" / "masks" / "a.log"
    write_log(old)
    os.utime(old, (1_000_000, 1_000_000))
    write_log(tmp_path / "logs" / "train" / "all-bce.log")
    stream = io.StringIO()
    summarise_warnings(tmp_path / "logs", since=2_000_000, full_list="W.md", stream=stream)
    text = stream.getvalue()
    assert "2 warnings in the logs of this run" in text
    assert "[train]" in text and "[masks]" not in text
    assert "2 more from earlier runs; all are listed in W.md" in text


def test_no_logs_no_warnings(tmp_path):
    assert collect_warnings(tmp_path / "nothing").empty
    stream = io.StringIO()
    summarise_warnings(tmp_path / "nothing", stream=stream)
    assert stream.getvalue() == "protoseg: no warnings in the logs.\n"
    quiet = io.StringIO()
    summarise_warnings(tmp_path / "nothing", stream=quiet, quiet_if_none=True)
    assert quiet.getvalue() == ""
    assert "No job logged a warning" in warnings_markdown(collect_warnings(tmp_path))
