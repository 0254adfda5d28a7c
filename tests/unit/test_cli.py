"""The command line a person meets first: grouped help with defaults, "did you mean" for a
typo, and a warning for a mistyped PTSERVE_* variable."""

import re

import pytest

from ptserve.cli import GROUP_TITLES, main


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``ptserve ARGV`` in-process for commands that end in argparse (help and usage errors)."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_serve_help_is_grouped_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "serve", "--help")
    assert code == 0
    sections = re.findall(r"^(\S[^\n]*):\n", out, flags=re.MULTILINE)
    titles = [GROUP_TITLES[g] for g in ("model", "signature", "batching", "server", "security")]
    titles.append(GROUP_TITLES["observability"])
    assert [s for s in sections if s in titles] == titles, sections
    assert GROUP_TITLES["other"] not in sections  # every setting has a section
    model = out.split(GROUP_TITLES["model"], 1)[1].split("\n\n", 1)[0]
    assert "MODEL_PATH" in model
    assert "--model-class MODULE:CLASS" in model
    server = out.split(GROUP_TITLES["server"] + ":", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"--port PORT\s+Port to bind\. \(default: 8000\)", server)
    assert "(default: 127.0.0.1)" in server
    normalised = " ".join(out.split())
    assert "Log one line per request. (default: on)" in normalised
    assert "(default: the bundled example)" in normalised
    assert "PTSERVE_<NAME>" in normalised  # says where else each option can be set


@pytest.mark.parametrize(
    ("argv", "usage", "error"),
    [
        (
            ["serv"],
            "usage: ptserve [-h] COMMAND",
            "invalid choice: 'serv' (choose from 'serve', 'info', 'convert', 'ray') (did you mean serve?)",
        ),
        (
            ["serve", "--input-shap", "3"],
            "usage: ptserve serve [MODEL_PATH] [options]",
            "unrecognized arguments: --input-shap (did you mean --input-shape?)",
        ),
        (
            ["serve", "m.pt", "--max-bach-size", "3", "--prot=9"],
            "usage: ptserve serve",
            "unrecognized arguments: --max-bach-size 3 --prot=9 (did you mean --max-batch-size, --port?)",
        ),
        (
            ["serve", "--log-format", "jsn"],
            "usage: ptserve serve",
            "argument --log-format: invalid choice: 'jsn' (choose from 'auto', 'json', 'text') (did you mean json?)",
        ),
        (
            ["info", "m.pt", "--jsn"],
            "usage: ptserve info MODEL_PATH [options]",
            "unrecognized arguments: --jsn (did you mean --json?)",
        ),
        (
            ["serve", "--zzzz"],
            "usage: ptserve serve",
            "unrecognized arguments: --zzzz (see ptserve serve --help)",
        ),
    ],
)
def test_a_typo_gets_the_commands_usage_and_a_suggestion(
    argv: list[str], usage: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(capsys, *argv)
    assert code == 2
    assert err.startswith(usage), err
    assert err.rstrip().endswith(error), err


def test_an_option_is_never_taken_for_a_prefix_of_another(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without abbreviations, a new option can never change what an old command line means."""
    code, _, err = run_main(capsys, "serve", "--max-batch", "3")
    assert code == 2
    assert "did you mean --max-batch-size?" in err


def test_settings_errors_are_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "serve", "--input-shape", "6", "--input-names", "a", "b")
    assert code == 2
    assert err == (
        "ptserve: invalid settings:\n  2 input names (a, b) but one input shape; give a shape "
        "per input, e.g. --input-shape a=DIMS b=DIMS\n"
    )


def test_a_mistyped_environment_variable_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTSERVE_TRUST_MODULE", "netdef")
    code, _, err = run_main(capsys, "serve", "--port", "-1")  # stops at validation, loads nothing
    assert code == 2
    assert err.startswith(
        "ptserve: warning: PTSERVE_TRUST_MODULE is not a ptserve setting and is ignored; "
        "did you mean PTSERVE_TRUST_MODULES?\n"
    )
