"""Bad input to ``scripts/submit.py`` (a URL httpx cannot parse, a token file
that is not text or is empty) is one line on stderr and exit status 2, never
a traceback; and ``scripts/monitor.py --count 0`` means no limit, as its
``--help`` says.  No service is needed: every case fails before connecting.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptreclaim.cli import monitor
from ptreclaim.service.client import Client, ServiceError

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "scripts" / "submit.py"
#: Nothing listens there; the cases below never get as far as connecting.
NOWHERE = "http://127.0.0.1:1"


def _submit(args: list[str], env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("PTRECLAIM_TOKEN", "PTRECLAIM_SERVICE_URL")}
    return subprocess.run([sys.executable, str(SUBMIT), *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={**base, **(env or {})})


def _one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("submit.py: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("url", "detail"), [
    ("http://[::1", "Invalid port"),
    ("http://[zz]", "Invalid IPv6 address"),
])
def test_a_url_that_cannot_be_parsed_is_one_line(url: str, detail: str) -> None:
    _one_line_error(_submit(["--url", url, "list"]), f"--url {url}: not a valid URL",
                    detail, "give one like http://")


def test_client_refuses_a_bad_url_with_service_error() -> None:
    with pytest.raises(ServiceError, match=r"not a valid URL .*Invalid port"):
        Client("http://[::1")


def test_a_path_that_cannot_be_a_url_is_one_line() -> None:
    _one_line_error(_submit(["--url", NOWHERE, "status", "a\x01b"]),
                    "cannot request", "check the job id")


@pytest.mark.parametrize(("content", "needle"), [
    (b"\xff\xfe\x00", "not a text file (not UTF-8)"),
    (b"", "is empty"),
    (b"  \n\t\n", "is empty"),
    ("tok\u00e9n\n".encode(), "holds characters"),
    (b"abc\ndef\n", "holds characters"),
])
def test_a_bad_token_file_is_one_line(tmp_path: Path, content: bytes, needle: str) -> None:
    token = tmp_path / "token"
    token.write_bytes(content)
    line = _one_line_error(_submit(["--token-file", str(token), "--url", NOWHERE, "list"]),
                           f"--token-file {token}: {needle}", "scripts/serve.py",
                           "$PTRECLAIM_TOKEN")
    if needle == "is empty":
        assert "runs/service/token" in line  # where the token normally comes from


def test_a_bad_token_in_the_environment_is_one_line() -> None:
    _one_line_error(_submit(["--url", NOWHERE, "list"], {"PTRECLAIM_TOKEN": "ab\x01c"}),
                    "$PTRECLAIM_TOKEN holds characters")


def test_the_environment_token_wins_over_a_bad_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_bytes(b"")
    line = _one_line_error(_submit(["--token-file", str(token), "--url", NOWHERE, "list"],
                                   {"PTRECLAIM_TOKEN": "x" * 43}),
                           "cannot reach the service")
    assert "--token-file" not in line


def test_monitor_count_zero_means_no_limit() -> None:
    parser = monitor.build_parser()
    assert parser.parse_args([]).count == 0
    help_text = " ".join(parser.format_help().split())
    assert "0 (the default) means no limit: run until Ctrl-C" in help_text
    args = parser.parse_args(["--count", "0"])
    monitor._check_args(args)  # allowed
    # No limit: the ticks go on (taken 50 of them, interval 0: no sleep).
    assert len(list(itertools.islice(monitor._ticks(0.0, 0), 50))) == 50
    assert list(monitor._ticks(0.0, 3)) == [0, 1, 2]


def test_monitor_negative_count_is_refused() -> None:
    from ptreclaim.envs.sim.config import ConfigError

    args = monitor.build_parser().parse_args(["--count", "-1"])
    with pytest.raises(ConfigError, match="--count"):
        monitor._check_args(args)


def test_submit_export_takes_every_field_of_an_export_job() -> None:
    """``submit.py export`` sets every field the service's export job has, and the spec
    becomes the export_thresholds.py command line those flags name."""
    from ptreclaim.cli.export import build_parser as export_parser
    from ptreclaim.cli.submit import build_parser, build_spec
    from ptreclaim.service.runner import export_argv
    from ptreclaim.service.specs import ExportJob, parse_spec

    job = "0123456789abcdef"
    args = build_parser().parse_args([
        "export", job, "--seed", "1", "--best", "--iterations", "2", "--episodes", "3",
        "--tree-depth", "3", "--eval-episodes", "4", "--no-unseen"])
    spec, files = build_spec(args)
    parsed = parse_spec(spec)
    assert files == {} and isinstance(parsed, ExportJob)
    assert (parsed.seed, parsed.best, parsed.iterations, parsed.episodes, parsed.tree_depth,
            parsed.eval_episodes, parsed.unseen) == (1, True, 2, 3, 3, 4, False)
    flags = export_parser().parse_args(export_argv(parsed, Path("run")))
    assert flags.best and flags.no_unseen and (flags.iterations, flags.episodes) == (2, 3)
    default = parse_spec(build_spec(build_parser().parse_args(["export", job]))[0])
    assert isinstance(default, ExportJob) and default.unseen and not default.best
