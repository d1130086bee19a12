"""The systemd units: systemd itself checks them, and they keep the daemon's promises.

``systemd-analyze`` comes with Debian's ``systemd`` package.
"""

from __future__ import annotations

import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from shortdrama_worker.cli import _parser
from shortdrama_worker.settings import ApiSettings, ConsumerSettings, Settings, load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
SERVICE = DEPLOY / "shortdrama-worker.service"
TEMPLATE = DEPLOY / "shortdrama-worker@.service"
GPU_DROP_IN = DEPLOY / "shortdrama-worker.service.d" / "gpu.conf"
ENV_EXAMPLE = DEPLOY / "shortdrama-worker.env.example"
EXEC = "/opt/shortdrama-worker/venv/bin/shortdrama-worker"
SYSTEM_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or SYSTEM_UNITS is None,
    reason="systemd-analyze not installed (Debian package: systemd)",
)


def _directives(path: Path) -> dict[str, list[str]]:
    """``Key -> [values]``; systemd keys may repeat, so every value is kept."""
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def _fake_root(tmp_path: Path, units: dict[str, Path | str]) -> Path:
    """A root with systemd's own units, the executable and our units.

    ``--root`` makes systemd-analyze resolve ExecStart and the dependencies
    (network-online.target, ...) there instead of on this machine, where the
    daemon is not installed at /opt.
    """
    assert SYSTEM_UNITS is not None
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    exe = root / EXEC.lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    etc = root / "etc/systemd/system"
    for name, source in units.items():
        target = etc / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text() if isinstance(source, Path) else source)
    return root


def _verify(root: Path, unit: str) -> str:
    """Every complaint systemd-analyze has about ``unit``; empty when clean.

    It exits 0 on many problems (unknown keys, unparsable values are "ignored"),
    so its output counts as failure too.
    """
    proc = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            "--generators=no",
            f"--root={root}",
            str(root / "etc/systemd/system" / unit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 and not complaints:
        complaints = f"exit status {proc.returncode}"
    return complaints


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("units", "unit"),
    [
        ({"shortdrama-worker.service": SERVICE}, "shortdrama-worker.service"),
        (
            {
                "shortdrama-worker.service": SERVICE,
                "shortdrama-worker.service.d/gpu.conf": GPU_DROP_IN,
            },
            "shortdrama-worker.service",
        ),
        ({"shortdrama-worker@gpu0.service": TEMPLATE}, "shortdrama-worker@gpu0.service"),
        (
            {
                "shortdrama-worker@cpu.service": TEMPLATE,
                "shortdrama-worker@.service.d/gpu.conf": GPU_DROP_IN,
            },
            "shortdrama-worker@cpu.service",
        ),
    ],
    ids=["service", "service+gpu", "template", "template+gpu"],
)
def test_systemd_analyze_verify_is_clean(
    tmp_path: Path, units: dict[str, Path | str], unit: str
) -> None:
    assert _verify(_fake_root(tmp_path, units), unit) == ""


@needs_systemd_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # Proves the check above can fail: systemd only warns about these.
    broken = SERVICE.read_text().replace("WatchdogSec=60", "WatchdogSec=sixty")
    broken = broken.replace("Type=notify", "Type=notifyy")
    root = _fake_root(tmp_path, {"shortdrama-worker.service": broken})
    complaints = _verify(root, "shortdrama-worker.service")
    assert "sixty" in complaints
    assert "notifyy" in complaints


@needs_systemd_analyze
def test_hardening_keeps_the_exposure_score_low(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, {"shortdrama-worker.service": SERVICE})
    proc = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            f"--root={root}",
            "--no-pager",
            str(root / "etc/systemd/system/shortdrama-worker.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    # A bare service scores 9.6; this unit 1.3, the rest being network access
    # and /proc, which the daemon needs. The key directives are pinned one by
    # one below; this catches the slow drift of dropping several lesser ones.
    assert float(match.group(1)) <= 1.5, proc.stdout


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=["service", "template"])
def test_unit_keeps_the_lifecycle_contract(unit: Path) -> None:
    d = _directives(unit)
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["Restart"] == ["on-failure"]
    assert d["KillSignal"] == ["SIGTERM"]
    assert d["KillMode"] == ["mixed"]
    argv = shlex.split(d["ExecStart"][0])
    assert argv[0] == EXEC
    # The daemon's own parser must accept the command line, or the unit
    # fails at every start while verify (which cannot run it) stays clean.
    args = _parser().parse_args(argv[1:])
    assert args.command == "serve"
    assert args.config.startswith("/etc/shortdrama-worker/")
    assert args.config.endswith(".toml")
    assert d["EnvironmentFile"][0].startswith("/etc/shortdrama-worker/")
    watchdog = _seconds(d["WatchdogSec"][0])
    assert 10 <= watchdog <= 300
    # SIGKILL must not cut the drain short: the grace plus time to write the
    # final state of the jobs it cancels.
    # Then open HTTP requests get api.shutdown_timeout_s before the server
    # closes them: that too must fit.
    grace = ConsumerSettings().shutdown_grace_s + ApiSettings().shutdown_timeout_s
    assert _seconds(d["TimeoutStopSec"][0]) >= grace + 30


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=["service", "template"])
def test_unit_is_hardened(unit: Path) -> None:
    d = _directives(unit)
    assert d["User"] != ["root"]
    assert d["User"], "a dedicated user"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert d.get(key) == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    writable = " ".join(d["ReadWritePaths"])
    assert "/var/lib/shortdrama-worker" in writable
    assert "/var/log/shortdrama-worker" in writable


def test_gpu_drop_in_opens_only_the_nvidia_devices() -> None:
    d = _directives(GPU_DROP_IN)
    assert d["PrivateDevices"] == ["no"]
    assert d["DevicePolicy"] == ["closed"]
    assert d["DeviceAllow"]
    assert all("nvidia" in allow for allow in d["DeviceAllow"])


def test_env_example_names_only_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SHORTDRAMA_* line in the example, commented or not, is a real setting.

    Sections are plain models that ignore unknown keys, so a misspelt variable
    would otherwise be dropped silently on a production host.
    """
    assignments: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?(SHORTDRAMA_[A-Z0-9_]+)=(.*)$", line.strip())
        if match:
            assignments[match.group(1)] = match.group(2)
    assert "SHORTDRAMA_AWS__ACCESS_KEY_ID" in assignments
    assert "SHORTDRAMA_AWS__SECRET_ACCESS_KEY" in assignments
    monkeypatch.delenv("SHORTDRAMA_CONFIG", raising=False)
    for name, value in assignments.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    for name in assignments:
        node: object = settings
        for part in name.removeprefix("SHORTDRAMA_").lower().split("__"):
            if isinstance(node, dict):
                assert part in node, name
                node = node[part]
            else:
                assert part in type(node).model_fields, name
                node = getattr(node, part)
    assert isinstance(settings, Settings)
