"""The live advisor (``scripts/monitor.py``) on this host and on fake proc trees.

Two real child processes: a table hog (a sparse 32 GiB mapping with one page
touched per 2 MiB block, then each page dropped with a 4 KiB MADV_DONTNEED,
which leaves 16384 empty PTE tables behind: rule 7 of RULES.md) and a sane
process with the same memory footprint in ordinary resident pages.  With
thresholds whose per-process limit only the hog exceeds, the advisor must
name the hog (PID and command line) and not the sane one, with the
per-process limit as the reason.  Fake proc trees (``--proc-root``) give the
degraded hosts: no PSI, no zoneinfo, a process that vanished, an unreadable
status.  The read-only guarantee is checked at the syscall level (strace)
and at the Python level (an audit hook), and an unprivileged run must work
and say what it could not read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptreclaim.agents import advisor
from ptreclaim.agents.heuristics import make_rule
from ptreclaim.agents.loading import parse_policy
from ptreclaim.agents.trust import MANIFEST, sign_artifacts
from ptreclaim.envs import features
from ptreclaim.envs.features import OBS_NAMES
from ptreclaim.envs.host import sample as hostsample
from ptreclaim.envs.sim.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "monitor.py"
THRESHOLDS = ROOT / "tests" / "data" / "monitor" / "per_process.yaml"
HOG_BLOCKS = 16384  # 64 MiB of empty PTE tables
MARK = "ptreclaim-monitor-test"

CHILD = f"""
import mmap, sys
kind, blocks = sys.argv[1], int(sys.argv[2])
if kind == "hog":
    # MAP_NORESERVE (0x4000): a sparse reservation, nothing is committed.
    m = mmap.mmap(-1, blocks << 21, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)
    for i in range(blocks):
        m[i << 21] = 1  # one page per 2 MiB block: one PTE table each
    for i in range(blocks):
        m.madvise(mmap.MADV_DONTNEED, i << 21, 4096)  # 4 KiB: the table stays, empty
else:
    # The same footprint as the hog (RSS + page tables) in ordinary resident memory.
    buf = bytearray((blocks // 256) << 20)
    for i in range(0, len(buf), 4096):
        buf[i] = 1
print("ready", flush=True)
sys.stdin.read()  # {MARK}: exits when the test closes stdin
"""


class Child:
    """A child process that holds its memory until stdin closes."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(HOG_BLOCKS)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"{kind} child did not start: {line!r}"
        self.pid = self.proc.pid

    def status(self) -> dict[str, int]:
        from ptreclaim.envs.host.procfs import read_status

        return read_status(self.pid)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def children() -> Iterator[tuple[Child, Child]]:
    hog = Child("hog")
    sane = Child("sane")
    try:
        yield hog, sane
    finally:
        hog.stop()
        sane.stop()


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a .pyc write would be a write outside the output
    env.update(extra)
    return env


def _run(args: list[str], prefix: list[str] | None = None, env: dict[str, str] | None = None,
         cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), sys.executable, str(SCRIPT), *args], cwd=cwd,
                          env=env or _env(), capture_output=True, text=True, timeout=120)


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _one(args: list[str], **kw: Any) -> dict[str, Any]:
    res = _run([*args, "--once", "--json"], **kw)
    assert res.returncode == 0, res.stderr
    (rec,) = _lines(res.stdout)
    return rec


# ------------------------------------------------------------------ real children

def test_children_look_as_intended(children: tuple[Child, Child]) -> None:
    """The hog's page tables exceed its RSS; the sane child's are tiny."""
    hog, sane = children
    h, s = hog.status(), sane.status()
    assert h["VmPTE"] >= HOG_BLOCKS * 4  # one 4 KiB PTE table per block
    assert h["VmPTE"] / (h["VmPTE"] + h["VmRSS"]) > 0.5
    assert s["VmPTE"] / (s["VmPTE"] + s["VmRSS"]) < 0.05
    # Same footprint, within a factor of 2.
    assert 0.5 < (s["VmRSS"] + s["VmPTE"]) / (h["VmRSS"] + h["VmPTE"]) < 2.0


def test_names_the_hog_not_the_sane_process(children: tuple[Child, Child]) -> None:
    hog, sane = children
    rec = _one(["--policy", str(THRESHOLDS), "--top", "1000"])
    a = rec["advice"]
    zone = rec["host"]["zone_pages"]
    if HOG_BLOCKS / zone <= 0.0005:
        pytest.skip(f"the unmovable zone ({zone} pages) is too large for the fixture's "
                    "proc_pt_frac 0.0005")
    assert a["reclaim"] is True
    assert a["target"] == "process"
    assert a["pid"] == hog.pid != sane.pid
    assert MARK in a["cmdline"] and " -c " in a["cmdline"]  # the command line, as ps shows it
    assert "\n" not in a["cmdline"]
    assert a["budget_tables"] == 512 and a["depth"] == "empty"  # soft_budget 2, soft_depth 0
    assert a["min_idle_rounds"] == 2  # soft_idle 2
    assert a["action"] == [2, 0, 2, 1, 0]  # the hog is the top-1 consumer
    assert a["reason"].startswith("a suspect; top-1 consumer is a suspect")
    assert "> 0.5, " in a["reason"] and "> 0.0005 of the zone" in a["reason"]
    rows = {r["pid"]: r for r in rec["top"]}
    assert rows[hog.pid]["ratio"] > 0.5 and rows[sane.pid]["ratio"] < 0.05
    assert rec["top"][0]["pid"] == hog.pid  # the largest page-table holder
    assert rec["obs"]["top1_pt_ratio"] == pytest.approx(rows[hog.pid]["ratio"], abs=1e-4)
    assert list(rec["obs"]) == list(OBS_NAMES)
    assert {"refault_rate", "last_yield"} <= set(rec["unavailable"])
    # One sample: no earlier VmPTE to measure growth against.
    assert {"top1_growth", "empty_seen", "empty_refault"} <= set(rec["unavailable"])


def test_without_the_hog_nobody_is_named(children: tuple[Child, Child]) -> None:
    """Judged alone, the sane process is under the per-process limit."""
    _, sane = children
    rec = _one(["--policy", str(THRESHOLDS), "--top", "1000"])
    procs = [hostsample.ProcSample(r["pid"], r["vmpte_kib"], r["vmrss_kib"], r["maps"])
             for r in rec["top"] if r["pid"] == sane.pid]
    live = advisor.load_policy(str(THRESHOLDS))
    obs = np.zeros(len(OBS_NAMES), dtype=np.float32)
    obs[OBS_NAMES.index("top1_pt_frac")] = procs[0].pte_kib / 4 / rec["host"]["zone_pages"]
    obs[OBS_NAMES.index("top1_pt_ratio")] = procs[0].ratio
    advice = advisor.advise(live, obs, procs, Path("/proc"))
    assert advice.target == "none" and advice.pid is None
    assert "and no suspect" in advice.reason


def test_json_thresholds_scan_and_count(children: tuple[Child, Child], tmp_path: Path) -> None:
    """The JSON form of the thresholds, --scan-top, --count, --json-out appends."""
    import yaml

    hog, _ = children
    data = yaml.safe_load(THRESHOLDS.read_text())
    js = tmp_path / "per_process.json"
    js.write_text(json.dumps(data))
    out = tmp_path / "log.jsonl"
    out.write_text('{"earlier": true}\n')
    res = _run(["--policy", str(js), "--scan-top", "1", "--count", "2", "--interval", "0.2",
                "--json-out", str(out), "--quiet"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""  # --quiet: only the file
    first, *recs = _lines(out.read_text())
    assert first == {"earlier": True}  # never lose earlier output
    assert [r["interval"] for r in recs] == [0, 1]
    for r in recs:
        assert r["advice"]["pid"] == hog.pid
        top = r["top"][0]
        assert top["pid"] == hog.pid
        # Every block's table is empty (upper tables above empty ones may add a few).
        assert HOG_BLOCKS <= top["empty_tables_est"] <= HOG_BLOCKS + 64
    # Notes are said once: what the first line said, the second does not repeat.
    assert not set(recs[0]["notes"]) & set(recs[1]["notes"])
    assert any("not available live" in n for n in recs[0]["notes"])


def test_distilled_tree_rule_gives_its_path(children: tuple[Child, Child],
                                            tmp_path: Path) -> None:
    """A thresholds file with a decision tree (what distillation also
    exports): the reason is the path of conditions that fired."""
    import yaml

    hog, _ = children
    tree = tmp_path / "tree.yaml"
    tree.write_text(yaml.safe_dump({"schema_version": 2, "rule": {"kind": "tree", "tree": {
        "feature": "top1_pt_ratio", "above": 0.5,
        "then": {"action": [3, 1, 0, 1, 0]}, "else": {"action": [0, 0, 0, 0, 0]}}}}))
    a = _one(["--policy", str(tree)])["advice"]
    assert a["pid"] == hog.pid and a["budget_tables"] == 4096 and a["depth"] == "empty+zero"
    assert a["reason"].startswith("top1_pt_ratio 0.8") and a["reason"].endswith("> 0.5")


def test_table_output(children: tuple[Child, Child]) -> None:
    hog, _ = children
    res = _run(["--policy", str(THRESHOLDS), "--once", "--top", "3"])
    assert res.returncode == 0, res.stderr
    assert f"from PID {hog.pid}" in res.stdout
    assert "top page-table consumers" in res.stdout and "why: a suspect" in res.stdout
    assert "not available live (neutral value): top1_growth, " in res.stderr
    assert "refault_rate, last_yield, empty_seen" in res.stderr


def test_other_heuristic_gives_its_own_reason() -> None:
    rec = _one(["--policy", "heuristic:none", "--no-maps"])
    assert rec["advice"]["reclaim"] is False
    assert rec["advice"]["reason"] == ("none: never reclaims, on a kernel before 6.14 "
                                       "(DONTNEED frees nothing)")
    assert all(r["maps"] is None for r in rec["top"])


# ------------------------------------------------------------------ read-only

_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
_FORBIDDEN = ("kill", "tkill", "tgkill", "pidfd_send_signal", "rt_sigqueueinfo",
              "rt_tgsigqueueinfo", "ptrace", "process_vm_writev", "truncate", "unlink",
              "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir",
              "chmod", "fchmodat", "chown", "fchownat", "symlink", "symlinkat", "link",
              "linkat", "mknod", "mknodat")


def test_read_only_under_strace(children: tuple[Child, Child], tmp_path: Path) -> None:
    """Syscall level: every open of the advisor (and of any thread or child it
    might start) is read-only except its own output file, and it sends no
    signal and changes no file.  strace sees what C code (numpy, ctypes'
    ioctl, libc) does as well as Python, which an audit hook would miss."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    probe = subprocess.run([strace, "-f", "-o", os.devnull, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode().strip()}")
    hog, _ = children
    trace = tmp_path / "trace.txt"
    out = tmp_path / "out.jsonl"
    calls = ",".join(["open", "openat", "?openat2", "creat", *_FORBIDDEN])
    res = _run(["--policy", str(THRESHOLDS), "--scan-top", "2", "--count", "2", "--interval",
                "0.1", "--json-out", str(out)],
               prefix=[strace, "-f", "-qq", "-s", "4096", "-o", str(trace), "-e", f"trace={calls}"])
    assert res.returncode == 0, res.stderr
    assert _lines(out.read_text())[0]["advice"]["pid"] == hog.pid
    lines = trace.read_text().splitlines()
    assert any("/proc/" in ln and "/pagemap" in ln for ln in lines), "the scan did not run"
    def violates(line: str) -> bool:
        words = line.split(None, 1)
        call = words[1] if len(words) > 1 else ""
        name = call.split("(", 1)[0]
        if name in _FORBIDDEN:  # even a failed attempt
            return True
        writes = name == "creat" or (name.startswith("open")
                                     and any(f in call for f in _WRITE_FLAGS))
        return writes and f'"{out}"' not in call

    bad = [ln for ln in lines if violates(ln)]
    assert not bad, "writes or signals outside the output:\n" + "\n".join(bad[:20])


AUDIT_HOOK = """
import os, sys, traceback
_ALLOWED = os.path.realpath(os.environ["MONITOR_TEST_ALLOWED"])
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_FORBIDDEN = {"os.kill", "os.killpg", "signal.pthread_kill", "os.system", "os.exec",
              "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
              "os.truncate", "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod",
              "os.chown", "os.link", "os.symlink", "os.utime", "os.chflags", "shutil.rmtree"}

def _fail(what):
    sys.stderr.write(f"READ-ONLY VIOLATION: {what}\\n")
    traceback.print_stack(file=sys.stderr)
    sys.stderr.flush()
    os._exit(99)

def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int) or not isinstance(flags, int) or not flags & _WRITE:
            return
        real = os.path.realpath(os.fsdecode(path))
        if not real.startswith(_ALLOWED + os.sep):
            _fail(f"open({path!r}, {mode!r}, {flags:#o})")
    elif event in _FORBIDDEN:
        _fail(f"{event}{args!r}")

sys.addaudithook(_hook)
"""


def test_read_only_under_an_audit_hook(children: tuple[Child, Child], tmp_path: Path) -> None:
    """Python level, without ptrace: a sitecustomize audit hook ends the
    advisor with status 99 on any open-for-write outside its output folder,
    any signal, process start or file-system change."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT_HOOK)
    outdir = tmp_path / "out"
    outdir.mkdir()
    env = _env(PYTHONPATH=str(hooks), MONITOR_TEST_ALLOWED=str(outdir))
    # The hook itself works: writing elsewhere is caught.
    probe = subprocess.run([sys.executable, "-c", f"open({str(tmp_path / 'x')!r}, 'w')"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 99 and "READ-ONLY VIOLATION" in probe.stderr
    res = _run(["--policy", str(THRESHOLDS), "--scan-top", "2", "--count", "2", "--interval",
                "0.1", "--json-out", str(outdir / "log.jsonl")], env=env)
    assert res.returncode == 0, res.stderr
    assert "READ-ONLY VIOLATION" not in res.stderr
    assert len(_lines((outdir / "log.jsonl").read_text())) == 2


# ------------------------------------------------------------------ unprivileged

def test_unprivileged_run_says_what_it_could_not_read(children: tuple[Child, Child]) -> None:
    """As nobody: status files are world-readable, other users' mappings and
    pagemaps are not; the advisor still advises and says so once."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import ptreclaim.cli.monitor"],
                           capture_output=True, text=True, timeout=60, env=_env())
    if probe.returncode != 0:
        pytest.skip(f"cannot run the project as nobody: {probe.stderr.strip()[-200:]}")
    hog, _ = children
    res = _run(["--policy", str(THRESHOLDS), "--scan-top", "2", "--once", "--json"],
               prefix=prefix, env=_env(HOME="/"), cwd=Path("/"))
    assert res.returncode == 0, res.stderr
    (rec,) = _lines(res.stdout)
    assert rec["advice"]["pid"] == hog.pid  # status is enough to judge
    assert rec["maps_unreadable"] > 0
    notes = " ".join(rec["notes"])
    assert "could not read /proc/PID/maps" in notes
    assert "--scan-top" in notes and "permission denied" in notes
    assert "empty_tables_est" not in rec["top"][0]


# ------------------------------------------------------------------ fake proc trees

ZONEINFO = """\
Node 0, zone      DMA
  per-node stats
      nr_inactive_anon 100
      nr_free_cma  7
  pages free     3840
        boost    0
        min      22
        low      27
        high     32
        spanned  4095
        present  3998
        managed  3840
        cma      0
        protection: (0, 3019, 11339, 11339, 11339)
      nr_free_pages 3840
      nr_free_cma  0
Node 0, zone   Normal
  pages free     100000
        min      1000
        low      1250
        high     1500
        spanned  262144
        present  262144
        managed  258304
        cma      4096
      nr_free_cma  2048
Node 0, zone  Movable
  pages free     500000
        min      32
        low      32
        high     32
        spanned  1000000
        present  1000000
        managed  1000000
        cma      0
      nr_free_cma  0
Node 0, zone   Device
  pages free     0
        min      0
        low      0
        high     0
        managed  0
"""

MEMINFO = "MemTotal:        5000000 kB\nMemFree:         2000000 kB\nPageTables:        10240 kB\n"
VMSTAT = "nr_free_pages 100\nallocstall_dma 0\nallocstall_normal 5\nallocstall_movable 9\n"


def _status(pid: int, name: str, pte: int | None, rss: int) -> str:
    vm = f"VmRSS:\t{rss} kB\nVmPTE:\t{pte} kB\n" if pte is not None else ""
    return f"Name:\t{name}\nState:\tS (sleeping)\nPid:\t{pid}\nPPid:\t1\n{vm}Threads:\t1\n"


def fake_proc(base: Path, *, psi: bool = False, zoneinfo: bool = True,
              meminfo: bool = True) -> Path:
    """A proc tree: hog 100 (8 MiB tables, 1 MiB RSS), sane 200, unreadable
    status 300, vanished 400, kernel thread 500."""
    root = base / "proc"
    root.mkdir()
    if zoneinfo:
        (root / "zoneinfo").write_text(ZONEINFO)
    if meminfo:
        (root / "meminfo").write_text(MEMINFO)
    (root / "vmstat").write_text(VMSTAT)
    if psi:
        (root / "pressure").mkdir()
        (root / "pressure" / "memory").write_text(
            "some avg10=12.50 avg60=3.00 avg300=1.00 total=5\n"
            "full avg10=1.00 avg60=0.50 avg300=0.10 total=2\n")
    maps = ("00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/hog\n"
            "7f0000000000-7f8000000000 rw-p 00000000 00:00 0 \n")
    for pid, name, pte, rss in ((100, "hog", 8192, 1024), (200, "sane", 64, 8192)):
        d = root / str(pid)
        d.mkdir()
        (d / "status").write_text(_status(pid, name, pte, rss))
        (d / "maps").write_text(maps)
        (d / "comm").write_text(name + "\n")
        (d / "cmdline").write_bytes(f"/usr/bin/{name}\0--flag\0".encode())
    (root / "300").mkdir()
    (root / "300" / "status").mkdir()  # reading it fails (EISDIR), even as root
    (root / "400").mkdir()  # exited between the listing and the read
    (root / "500").mkdir()
    (root / "500" / "status").write_text(_status(500, "kworker/0:1", None, 0))
    return root


def test_fake_proc_degraded(tmp_path: Path) -> None:
    root = fake_proc(tmp_path)
    res = _run(["--proc-root", str(root), "--policy", str(THRESHOLDS), "--count", "3",
                "--interval", "0.05", "--json", "--scan-top", "2"])
    assert res.returncode == 0, res.stderr
    recs = _lines(res.stdout)
    assert len(recs) == 3
    r = recs[0]
    assert r["processes"] == 2 and r["vanished"] == 1 and r["unreadable"] == 1
    assert r["advice"]["pid"] == 100 and r["advice"]["cmdline"] == "/usr/bin/hog --flag"
    assert r["advice"]["comm"] == "hog"
    # Zones: DMA + Normal less CMA; Movable and the empty Device zone left out.
    assert r["host"]["zones"] == ["0:DMA", "0:Normal"]
    assert r["host"]["zone_pages"] == 3840 + 258304 - 4096
    assert r["host"]["free_pages"] == 3840 + 100000 - 2048
    assert r["host"]["wmark_min_low_high"] == [1022, 1277, 1532]
    assert r["host"]["psi"] is None
    assert r["unavailable"] == [n for n in OBS_NAMES if n in (
        *advisor.PSI_NAMES, *advisor.NEVER_LIVE, *advisor.GROWTH_NAMES)]
    # From the second sample on, the growth is measured.
    assert recs[1]["unavailable"] == [n for n in OBS_NAMES if n in (
        *advisor.PSI_NAMES, *advisor.NEVER_LIVE)]
    assert r["obs"]["pt_frac"] == pytest.approx(10240 / 4 / (3840 + 258304 - 4096), rel=1e-5)
    notes = " ".join(r["notes"])
    assert "pressure/memory: no PSI" in notes
    assert "could not read /proc/PID/status of 1 process(es) (e.g. 300" in notes
    # Said once: the later lines repeat none of it.
    assert recs[1]["notes"] == [] and recs[2]["notes"] == []
    # The stderr copy of the notes is not printed with --json... it is; once each.
    assert res.stderr.count("no PSI") == 1


def test_fake_proc_with_psi_and_without_zoneinfo(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, psi=True, zoneinfo=False)
    rec = _one(["--proc-root", str(root), "--policy", "heuristic:soft_hard"])
    assert rec["obs"]["psi_some_avg10"] == pytest.approx(0.125)
    assert rec["obs"]["psi_full_avg60"] == pytest.approx(0.005)
    assert rec["host"]["zones"] == ["all"]
    assert rec["host"]["zone_pages"] == 5000000 // 4
    assert any("zoneinfo" in n and "default formula" in n for n in rec["notes"])


def test_plot_of_a_session(tmp_path: Path) -> None:
    """--plot writes a PNG timeline at the end of the session."""
    root = fake_proc(tmp_path, psi=True)
    png = tmp_path / "session.png"
    res = _run(["--proc-root", str(root), "--policy", str(THRESHOLDS), "--count", "3",
                "--interval", "0.05", "--plot", str(png), "--json"],
               env=_env(MPLCONFIGDIR=str(tmp_path / "mpl")))
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in res.stderr
    assert sum(r["advice"]["reclaim"] for r in _lines(res.stdout)) == 3


def test_not_a_proc_tree_is_one_line(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, zoneinfo=False, meminfo=False)
    res = _run(["--proc-root", str(root), "--once", "--json"])
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "is --proc-root a proc filesystem?" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(("args", "expect"), [
    (["--policy", "heuristic:soft_hrad"], "did you mean 'soft_hard'"),
    (["--policy", "nothere.yaml"], "no such file"),
    (["--interval", "0"], "--interval"),
    (["--scan-top", "-1"], "--scan-top"),
    (["--count", "-2"], "--count"),
    (["--proc-root", "/nonexistent/proc"], "--proc-root"),
    (["--bogus"], "unrecognized arguments"),
    (["--plot", "session.txt"], "--plot"),
    (["--plot", "/nonexistent/dir/session.png"], "--plot"),
    (["--policy", "oracle=heuristic:none", "--json-out", "/nonexistent/dir/log.jsonl"],
     "--json-out"),
])
def test_bad_input_is_one_line(args: list[str], expect: str) -> None:
    res = _run([*args, "--once"])
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and expect in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------ units

def test_parse_zoneinfo_and_unmovable_zone() -> None:
    zones = hostsample.parse_zoneinfo(ZONEINFO)
    assert [z.name for z in zones] == ["DMA", "Normal", "Movable", "Device"]
    dma, normal = zones[0], zones[1]
    assert (dma.free, dma.min, dma.managed, dma.free_cma) == (3840, 22, 3840, 0)
    assert (normal.cma, normal.free_cma, normal.high) == (4096, 2048, 1500)
    u = hostsample.unmovable_zone(zones)
    assert u is not None and u.zones == ("0:DMA", "0:Normal")
    assert hostsample.unmovable_zone([zones[2], zones[3]]) is None


def test_parse_psi_and_kv() -> None:
    psi = hostsample.parse_psi("some avg10=1.50 avg60=0.25 avg300=0.00 total=1\n")
    assert psi == {"some_avg10": 0.015, "some_avg60": 0.0025}
    assert hostsample.parse_kv(MEMINFO)["PageTables"] == 10240


def test_fail_share_window() -> None:
    state = advisor.LiveState(interval_s=5.0, now=0.0)  # 10 s / 5 s: two intervals
    assert state.window.maxlen == 2
    assert state.fail_share(10) == 0.0  # nothing to compare with yet
    assert state.fail_share(12) == 0.5
    assert state.fail_share(12) == 0.5
    assert state.fail_share(12) == 0.0
    assert advisor.LiveState(0.1, 0.0).window.maxlen == 100


def test_notes_said_once() -> None:
    notes = hostsample.Notes()
    notes.add("a", "first")
    notes.add("a", "again")
    notes.add("b", "second")
    assert notes.take() == ["first", "second"] and notes.take() == []
    notes.add("a", "third")
    assert notes.take() == [] and notes.all == ["first", "second"]


def test_observation_matches_the_env() -> None:
    """The same machine state, observed by the env and by the advisor, gives
    the same features (except those the advisor tracks over time)."""
    from ptreclaim.configs import CONFIG_DIR
    from ptreclaim.envs.configio import load_scenario
    from ptreclaim.envs.pagetable_env import PageTableReclaimEnv

    env = PageTableReclaimEnv([load_scenario(CONFIG_DIR / "scenarios" / "mixed_cloud.yaml")])
    env.reset(seed=3)
    for _ in range(5):
        env.step(np.array([0, 0, 0, 0, 0]))
    sim = env.sim
    assert sim is not None
    m = sim.machine
    want = env.observe([])
    zone = hostsample.UnmovableZone(m.normal_pages, m.normal_free, m.wmark.min, m.wmark.low,
                                 m.wmark.high, ("sim",), "test")
    psi = {"some_avg10": m.psi.some_avg10, "some_avg60": m.psi.some_avg60,
           "full_avg10": m.psi.full_avg10, "full_avg60": m.psi.full_avg60}
    pt_kib = sum(p.pt_bytes for p in sim.alive) // 1024
    host = hostsample.HostSample(zone, psi, pt_kib, None)
    procs = [hostsample.ProcSample(p.pid, p.pt_bytes // 1024, p.rss_bytes // 1024, None)
             for p in sim.alive]
    got, missing = advisor.observe(host, procs, advisor.LiveState(5.0, 0.0), 0.0)
    assert missing == [n for n in OBS_NAMES if n in (
        *advisor.NEVER_LIVE, *advisor.GROWTH_NAMES, "fail_share")]
    same = [i for i, n in enumerate(OBS_NAMES) if n not in missing and n != "since_pass"]
    assert want[same] == pytest.approx(got[same], abs=1e-6)
    assert np.count_nonzero(got[same]) >= 8  # a state with signal in it
    # The env's target N and the advisor's are the same process.
    for n in range(1, features.TOP_K + 1):
        theirs = env.target(n)
        mine = advisor.advise(advisor.LivePolicy(
            parse_policy("heuristic:none"), make_rule("constant", {
                "budget": 1, "target": n}), (0, 64)), got, procs, Path("/nonexistent"))
        assert (theirs.pid if theirs else None) == mine.pid


def test_scan_never_write_protects(children: tuple[Child, Child],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """PAGEMAP_SCAN can also write-protect the pages it matches
    (PM_SCAN_WP_MATCHING): the advisor's scan must ask for no such flag.  strace
    does not decode the ioctl's argument, so this looks at it directly."""
    from ptreclaim.envs.host import procfs

    hog, _ = children
    seen: list[tuple[int, int]] = []
    real = procfs.fcntl.ioctl

    def spy(fd: int, request: int, arg: Any, *rest: Any) -> Any:
        if request == procfs.PAGEMAP_SCAN:
            seen.append((int(arg.flags), int(arg.category_inverted)))
        return real(fd, request, arg, *rest)

    monkeypatch.setattr(procfs.fcntl, "ioctl", spy)
    st = hog.status()
    notes = hostsample.Notes()
    res = hostsample.scan_empty_tables(Path("/proc"), [hostsample.ProcSample(
        hog.pid, st["VmPTE"], st["VmRSS"], None)], notes)
    assert seen and all(flags == 0 for flags, _ in seen)
    assert res[hog.pid].method == "pagemap_scan"
    assert HOG_BLOCKS <= res[hog.pid].empty_tables <= HOG_BLOCKS + 64


def test_learned_policy_from_a_run_folder(tmp_path: Path) -> None:
    """A model (untrained, with VecNormalize statistics) from a run folder:
    the observation is normalised as evaluate.py does, the reason names the
    features furthest from the training data, and the action decodes."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from ptreclaim.envs.pagetable_env import EnvConfig, PageTableReclaimEnv
    from ptreclaim.envs.sim.simulator import ScenarioConfig

    torch.set_num_threads(1)
    runs = tmp_path / "runs"
    run = runs / "tiny__ppo__0__20260101-000000"
    run.mkdir(parents=True)
    venv = VecNormalize(DummyVecEnv([lambda: PageTableReclaimEnv([ScenarioConfig()],
                                                                 EnvConfig())]))
    PPO("MlpPolicy", venv, n_steps=8, batch_size=8, seed=0, device="cpu").save(
        run / "model.zip")
    venv.save(str(run / "vecnormalize.pkl"))
    sign_artifacts(run, [run / "model.zip", run / "vecnormalize.pkl"])  # as train.py does
    live = advisor.load_policy(str(run))
    assert live.spec.kind == "model" and live.spec.vecnormalize
    obs = np.full(len(OBS_NAMES), 0.1, dtype=np.float32)
    obs[OBS_NAMES.index("pt_frac")] = 0.9
    procs = [hostsample.ProcSample(os.getpid(), 2048, 1024, 10)]
    advice = advisor.advise(live, obs, procs, Path("/proc"))
    assert advice.reason.startswith("learned policy; signals furthest from its training data: "
                                    "pt_frac 0.9 (z ")
    assert len(advice.action) == 5 and advice.depth in advisor.DEPTH_NAMES
    if advice.target == "process":
        assert advice.pid == os.getpid()
    # A model this machine did not sign needs --trust-model (it holds pickles).
    (run / MANIFEST).unlink()
    with pytest.raises(ConfigError, match=r"not trusted.*--trust-model"):
        advisor.load_policy(str(run))


@pytest.mark.parametrize(("option", "needle"), [("candidate_counts", "exact per-class"),
                                                 ("burst_memory", "an ablation")])
def test_the_advisor_refuses_a_model_trained_on_signals_it_does_not_sample(
        tmp_path: Path, option: str, needle: str) -> None:
    import torch
    from stable_baselines3 import PPO

    from ptreclaim.envs.pagetable_env import EnvConfig, PageTableReclaimEnv
    from ptreclaim.envs.sim.simulator import ScenarioConfig

    torch.set_num_threads(1)
    run = tmp_path / "runs" / "abl__ppo__0__20260101-000000"
    run.mkdir(parents=True)
    env = PageTableReclaimEnv([ScenarioConfig()], EnvConfig(**{option: True}))
    PPO("MlpPolicy", env, n_steps=8, batch_size=8, seed=0, device="cpu").save(
        run / "model.zip")
    (run / "config.yaml").write_text(f"env:\n  {option}: true\n")
    sign_artifacts(run, [run / "model.zip"])
    with pytest.raises(ConfigError, match=rf"trained with env\.{option} \({needle}"):
        advisor.load_policy(str(run))


def _obs_for(procs: list[hostsample.ProcSample], zone_pages: int) -> np.ndarray:
    host = hostsample.HostSample(hostsample.UnmovableZone(zone_pages, zone_pages // 2, 100, 125,
                                                          150, ("t",), "test"), None, 4096, None)
    return advisor.observe(host, procs, advisor.LiveState(5.0, 0.0), 0.0)[0]


def test_advice_targets_the_nth_top_consumer() -> None:
    """The target N of an action is the N-th largest page-table holder, as in the env;
    without one, the env runs no pass, and the advice says why."""
    live = advisor.load_policy(str(THRESHOLDS))
    big = hostsample.ProcSample(10, 20000, 10000, None)  # ratio 0.67, the largest holder
    worse = hostsample.ProcSample(20, 2000, 100, None)  # ratio 0.95: the suspect by ratio
    tiny = hostsample.ProcSample(30, 1000, 1, None)  # ratio 0.999 but too small
    advice = advisor.advise(live, _obs_for([big, worse, tiny], 1 << 19), [big, worse, tiny],
                            Path("/nonexistent"))
    assert advice.target == "process" and advice.pid == 20 and advice.action[3] == 2
    assert "top-2 consumer is a suspect" in advice.reason
    assert advice.comm == "?" and advice.cmdline == ""  # gone: no crash
    two = advisor.LivePolicy(live.spec, make_rule("constant", {"budget": 2, "target": 2}),
                             live.budgets)
    advice = advisor.advise(two, _obs_for([big], 1 << 20), [big], Path("/proc"))
    assert advice.target == "none" and advice.budget_tables == 0 and advice.pid is None
    assert advice.reason.endswith("so no pass")


def test_growth_of_a_consumer_between_samples() -> None:
    """``topN_growth``: VmPTE growth between samples, in tables per tick, averaged."""
    state = advisor.LiveState(1.0, 0.0)
    first = state.consumers([hostsample.ProcSample(10, 4000, 0, None)], 0.0)
    assert first[0].growth_rate == 0.0
    # 400 KiB more in 1 s (10 ticks): 100 tables, 10 per tick, averaged over ~1 s.
    later = state.consumers([hostsample.ProcSample(10, 4400, 0, None)], 1.0)
    keep = advisor.RATE_DECAY ** 10
    assert later[0].growth_rate == pytest.approx(10.0 * (1 - keep))
    # A shrink is no growth; the average decays.
    again = state.consumers([hostsample.ProcSample(10, 100, 0, None)], 2.0)
    assert again[0].growth_rate == pytest.approx(10.0 * (1 - keep) * keep)
