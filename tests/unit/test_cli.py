import argparse
import json
from datetime import datetime, timedelta

import pytest

from consumer.cli import main
from consumer.settings import Settings
from interpretation import Alert
from tests.conftest import DATA, REPO

CONTRACT = {
    "analyte",
    "finding",
    "alert",
    "value",
    "comparator",
    "unit",
    "patient_id",
    "accession",
    "rule_id",
    "ruleset_version",
}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_interpret_prints_one_line_per_infliximab_result(capsys):
    code, lines, err = run(capsys, "interpret", str(DATA / "sample-feed.jsonl"))
    assert code == 1  # the feed holds two broken messages on purpose
    assert "sample-feed.jsonl:7: unsupported_format" in err
    assert all(set(line) >= CONTRACT for line in lines)
    assert {line["patient_id"] for line in lines} == {
        "TDM-PT-0001",
        "TDM-PT-0003",
        "TDM-PT-0004",
        "TDM-PT-0006",
        "TDM-PT-0007",
        "TDM-PT-0009",
    }
    assert not any(line["patient_id"] in ("TDM-PT-0002", "TDM-PT-0005", "TDM-PT-0008") for line in lines)


def test_interpret_context_options_apply_to_the_whole_input(capsys, tmp_path):
    feed = tmp_path / "one.jsonl"
    feed.write_text(
        json.dumps({"patient_id": "P", "results": [{"code": "39803-2", "value": "4.2", "unit": "ug/mL"}]})
    )
    _, [plain], _ = run(capsys, "interpret", str(feed))
    _, [induction], _ = run(capsys, "interpret", str(feed), "--phase", "induction", "--week", "6")
    assert (plain["finding"], plain["alert"]) == ("therapeutic", False)
    assert (induction["finding"], induction["alert"], induction["rule_id"]) == (
        "subtherapeutic",
        True,
        "ifx-induction-week-6",
    )


def test_interpret_reads_stdin(capsys, monkeypatch):
    import io
    import sys

    data = json.dumps({"patient_id": "P", "results": [{"code": "INXAB", "value": "75", "unit": "U/mL"}]})
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
    code, [line], _ = run(capsys, "interpret", "-")
    assert code == 0
    assert (line["analyte"], line["finding"], line["decided_by"]) == (
        "anti_infliximab_antibody",
        "antibodies_detected",
        "assay_cutoff",
    )


def test_rules_check_explains_errors(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1"}')
    assert main(["rules", "check", str(bad)]) == 2
    assert "bad.json is not a valid rule set" in capsys.readouterr().err


def test_rules_show_lists_every_threshold_with_its_citation(capsys):
    assert main(["rules", "show"]) == 0
    out = capsys.readouterr().out
    for number in ("3-7", "4.5", "4.0", "17.5", "30.3", "2.2", "9.7", "9.8", "50 U/mL"):
        assert number in out
    assert "[taxit-2015]" in out


def test_missing_input_file_is_a_usage_error(capsys):
    assert main(["interpret", "/nonexistent/feed.jsonl"]) == 2


def test_alert_schema_in_the_repo_matches_the_model():
    stored = json.loads((REPO / "docs" / "alert.schema.json").read_text())
    assert stored == Alert.model_json_schema(mode="serialization"), (
        "run: tdm-alerts alert-schema > docs/alert.schema.json"
    )


@pytest.mark.parametrize("argv", [["--version"], ["interpret", "--help"]])
def test_help_and_version_exit_cleanly(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:  # argparse keeps its sub-parsers here and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _subcommands(sub)
    return found


def test_every_command_and_option_has_help_text():
    from consumer.cli import build_parser

    for parser in _subcommands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{parser.prog}: {action.option_strings or action.dest} has no help"


def test_run_help_lists_every_setting_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for name in Settings.model_fields:
        assert f"TDM_{name.upper()} " in out
    assert "TDM_COMMIT_INTERVAL_MS" in out and " 100\n" in out


@pytest.mark.parametrize("command", [["dlq", "replay"], ["dlq", "list"]])
def test_a_since_time_without_a_utc_offset_is_refused_not_read_as_local(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--since", "2026-11-27T08:00"])
    assert exit_info.value.code == 2
    assert "has no UTC offset" in capsys.readouterr().err


def test_a_position_must_be_partition_colon_offset(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["dlq", "show", "12"])
    assert exit_info.value.code == 2
    assert "is not PARTITION:OFFSET" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["dlq", "list", "--limit", "-1"],
        ["dlq", "list", "--limit", "0"],
        ["dlq", "replay", "--limit", "x"],
        ["forget", ""],
    ],
)
def test_operator_arguments_that_mean_nothing_are_refused(argv, capsys):
    # Issue 28: `dlq list --limit -1` printed one line and `forget ""` was sent to the broker.
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_dlq_show_names_the_senders_headers_only_with_the_body():
    from consumer.clients.seam import Record
    from consumer.dead_letter_reader import DeadLetterView

    record = Record(
        "lab.results.dlq",
        0,
        7,
        key=None,
        value=b"MSH|...",
        headers=(("tdm.dlq.reason", b"invalid"), ("x-patient-mrn-4829105", b"1")),
        timestamp_ms=None,
    )
    view = DeadLetterView.of(record)
    assert "x-patient-mrn-4829105" not in view.describe()
    assert "other headers: 1" in view.describe()
    assert "x-patient-mrn-4829105" in view.describe(header_names=True)


def test_a_reader_that_stops_reading_ends_interpret_quietly(tmp_path):
    """`tdm-alerts interpret feed | head -1` is how people look at a file: no traceback."""
    import subprocess
    import sys

    feed = tmp_path / "feed.jsonl"  # far more output than a pipe holds: the writer meets EPIPE
    feed.write_text((DATA / "sample-feed.jsonl").read_text() * 300)
    command = [sys.executable, "-m", "consumer", "interpret", "--no-state", str(feed)]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as reading:
        assert reading.stdout is not None and reading.stderr is not None
        assert reading.stdout.readline().startswith(b"{")
        reading.stdout.close()  # as `head -n 1` does once it has its line
        assert reading.wait(timeout=120) == 0
        # The sample feed's unreadable lines are reported on stderr before the pipe breaks, or
        # not, depending on when the first block of stdout is flushed; only a traceback is wrong.
        errors = reading.stderr.read()
        assert b"Traceback" not in errors and b"BrokenPipe" not in errors


def test_interpret_now_replays_follow_ups_at_their_due_time(capsys, tmp_path):
    """Issue 39: the file is a timeline; a low level whose antibodies never come is followed up
    at its due time (the rule set's wait after the draw), one whose antibodies come is not."""
    from interpretation import default_ruleset
    from interpretation.ruleset import FollowUpKind

    rule = default_ruleset().follow_up(FollowUpKind.ANTIBODIES_NOT_RESULTED)
    assert rule is not None
    drawn = "2026-11-02T08:00:00+00:00"

    def line(patient: str, code: str, value: str, unit: str) -> str:
        result = {"code": code, "value": value, "unit": unit, "status": "final"}
        ids = {"patient_id": patient, "specimen_id": f"S-{patient}", "collected_at": drawn}
        return json.dumps({**ids, "results": [result]})

    feed = tmp_path / "timeline.jsonl"
    feed.write_text(
        "\n".join(
            [
                line("ALONE", "39803-2", "1.8", "ug/mL"),
                line("PAIRED", "39803-2", "1.9", "ug/mL"),
                line("PAIRED", "INXAB", "<50", "U/mL"),
            ]
        )
    )
    _, without, _ = run(capsys, "interpret", str(feed))
    assert not any("tick" in line for line in without)  # no --now: the lines as before
    due = datetime.fromisoformat(drawn) + timedelta(hours=float(rule.due_after_hours))
    _, before, _ = run(capsys, "interpret", str(feed), "--now", (due - timedelta(seconds=1)).isoformat())
    assert not any("tick" in line for line in before)
    code, lines, _ = run(capsys, "interpret", str(feed), "--now", (due + timedelta(days=3)).isoformat())
    ticks = [line for line in lines if "tick" in line]
    assert code == 0 and [(t["patient_id"], t["tick"]) for t in ticks] == [("ALONE", due.isoformat())]
    (event,) = ticks[0]["events"]
    said = (event["category"], event["action"], event["follow_up"]["late_seconds"])
    assert said == ("follow_up", "trigger", 0)


def test_interpret_now_needs_a_utc_offset(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["interpret", "-", "--now", "2026-11-27T08:00"])
    assert exit_info.value.code == 2 and "has no UTC offset" in capsys.readouterr().err
