"""`idd-edge ship` against a real OpenSSH server on 127.0.0.1 that the test starts (own config, keys, port).

sshd runs as a subprocess with a host key, an authorized key and a config in a temporary folder; the
"device" directory is in tmp_path too. Covers ship, verify, ship again, rollback, an interrupted upload,
a failed verification, host-key checking and the restart of the runtime's systemd user unit (the "device"
user's ~/.config is a temporary folder: sshd sets XDG_CONFIG_HOME for the session). Without sshd/rsync
the tests skip locally and FAIL in CI.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import pytest

from idd_edge import ship
from idd_edge.cli import main
from idd_edge.errors import InputError
from tests._runtime_bundle import build_onnx_bundle, manifest_dict, semantic_entry, write_manifest

TOOLS = ("sshd", "ssh", "ssh-keygen", "rsync", "sha256sum")


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/local/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Device:
    port: int
    user: str
    known_hosts: Path
    identity: Path
    ssh_config: Path
    host_key_pub: Path
    config_home: Path  # the device user's XDG_CONFIG_HOME (systemd user units live under it)

    def args(self, dest: Path, *extra: str) -> List[str]:
        return [
            "ship", "--host", f"{self.user}@127.0.0.1", "--port", str(self.port), "--dest", str(dest),
            "--known-hosts", str(self.known_hosts), "--identity", str(self.identity), "--ssh-config", str(self.ssh_config),
            *extra,
        ]  # fmt: skip

    def options(self, known_hosts: Path | None = None, accept_new: bool = False) -> ship.SshOptions:
        return ship.SshOptions(known_hosts or self.known_hosts, self.identity, self.ssh_config, accept_new)

    @property
    def target(self) -> ship.SshTarget:
        return ship.SshTarget(self.user, "127.0.0.1", self.port)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    missing = [tool for tool in TOOLS if _which(tool) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install openssh-server rsync)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SSH shipping tests: {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run([_which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    shutil.copyfile(root / "client_key.pub", root / "authorized_keys")
    port = _free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nAuthorizedKeysFile {root / 'authorized_keys'}\n"
        f"PidFile {root / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n"
        f"SetEnv XDG_CONFIG_HOME={root / 'config'}\n"
    )
    if os.geteuid() == 0:
        # The privilege-separation directory Debian's service unit creates; sshd run as root refuses to start without it.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = open(root / "sshd.log", "w")
    server = subprocess.Popen([_which("sshd"), "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            if server.poll() is not None:
                pytest.fail(f"sshd exited: {(root / 'sshd.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("sshd did not start listening within 15 s")
                time.sleep(0.05)
        (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {(root / 'host_key.pub').read_text()}")
        (root / "ssh_config").write_text("")
        yield Device(
            port, getpass.getuser(), root / "known_hosts", root / "client_key", root / "ssh_config", root / "host_key.pub", root / "config"
        )
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def _bundle(tmp_path: Path, version: str, extra_file: bytes | None = None) -> Path:
    """The real ONNX test bundle under another version, optionally with one more (large) model file."""
    bundle = build_onnx_bundle(tmp_path / f"bundle-{version}", version=version)
    data = json.loads((bundle / "manifest.json").read_text())
    (bundle / "runtime").mkdir()
    (bundle / "runtime" / "README.txt").write_text(f"runtime for {version}\n")
    if extra_file is not None:
        (bundle / "models" / "big.onnx").write_bytes(extra_file)
        data["models"].append(semantic_entry("big", "models/big.onnx", bundle))
    write_manifest(bundle, data)
    return bundle


def _current(dest: Path) -> str:
    return os.readlink(dest / "current")


def test_ship_verify_ship_again_and_rollback(device: Device, tmp_path: Path, capsys) -> None:
    from idd_edge_runtime.loader import load_runtime

    dest = tmp_path / "device" / "idd-edge"
    v1, v2 = _bundle(tmp_path, "v1"), _bundle(tmp_path, "v2")

    assert main(device.args(dest, "--bundle", str(v1))) == 0
    assert _current(dest) == "releases/v1"
    assert (dest / "history").read_text() == "v1\n"
    assert ship.checksum_list(dest / "current") == ship.checksum_list(v1)
    loaded = load_runtime(dest / "current", backend="onnx")  # what the runtime opens by default on the device
    assert loaded.manifest.version == "v1" and len(loaded.semantic) == 2
    loaded.close()

    assert main(device.args(dest, "--bundle", str(v2))) == 0
    assert _current(dest) == "releases/v2"
    assert "release v2 uploaded and verified; current -> v2 (was v1)" in capsys.readouterr().out
    # Unchanged models were hard-linked from the previous release (rsync --link-dest), not sent again.
    assert (dest / "releases/v1/models/yolo.onnx").stat().st_ino == (dest / "releases/v2/models/yolo.onnx").stat().st_ino

    assert main(device.args(dest, "--bundle", str(v2))) == 0  # the same release again: verified, nothing sent
    assert "already on the device, verified" in capsys.readouterr().out
    assert sorted(p.name for p in (dest / "releases").iterdir()) == ["v1", "v2"]

    assert main(device.args(dest, "--rollback")) == 0
    assert _current(dest) == "releases/v1"
    assert (dest / "history").read_text() == "v1\n"
    assert (dest / "releases" / "v2").is_dir()  # previous releases are kept
    assert main(device.args(dest, "--rollback")) == 2
    assert "no earlier release to roll back to" in capsys.readouterr().err


def test_interrupted_upload_leaves_current_untouched_and_resumes(device: Device, tmp_path: Path) -> None:
    dest = tmp_path / "device"
    assert ship.ship_bundle(_bundle(tmp_path, "v1"), device.target, str(dest), device.options()).version == "v1"
    v2 = _bundle(tmp_path, "v2", extra_file=os.urandom(3 << 20))
    partial = dest / "releases" / ".v2.partial"
    # 3 MiB at 64 KiB/s takes ~48 s: interrupt it (Ctrl-C to the whole process group) once files are arriving.
    process = subprocess.Popen(
        [sys.executable, "-m", "idd_edge.cli", *device.args(dest, "--bundle", str(v2), "--bwlimit", "64")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (partial.is_dir() and any(partial.rglob("*"))):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "interrupted" in stderr or "rsync upload failed" in stderr
    assert _current(dest) == "releases/v1" and not (dest / "releases" / "v2").exists()
    assert partial.is_dir()  # kept, so the next ship resumes instead of starting over

    result = ship.ship_bundle(v2, device.target, str(dest), device.options())
    assert result.uploaded and result.previous == "v1"
    assert _current(dest) == "releases/v2" and not partial.exists()
    assert ship.checksum_list(dest / "current") == ship.checksum_list(v2)


def test_failed_verification_discards_the_upload(device: Device, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "device"
    ship.ship_bundle(_bundle(tmp_path, "v1"), device.target, str(dest), device.options())
    real_rsync = ship._rsync

    def rsync_then_corrupt(*args, **kwargs) -> None:
        real_rsync(*args, **kwargs)
        # A bit flip on the device's disk after the transfer: exactly what the on-device check must catch.
        model = dest / "releases" / ".v2.partial" / "models" / "yolo.onnx"
        data = bytearray(model.read_bytes())
        data[100] ^= 0xFF
        model.write_bytes(bytes(data))

    monkeypatch.setattr(ship, "_rsync", rsync_then_corrupt)
    with pytest.raises(ship.ShipError, match=r"checksum verification of release v2 failed.*still points to v1.*ship again"):
        ship.ship_bundle(_bundle(tmp_path, "v2"), device.target, str(dest), device.options())
    assert _current(dest) == "releases/v1"
    assert not (dest / "releases" / ".v2.partial").exists() and not (dest / "releases" / "v2").exists()


def test_a_version_is_immutable_on_the_device(device: Device, tmp_path: Path) -> None:
    dest = tmp_path / "device"
    ship.ship_bundle(_bundle(tmp_path, "v1"), device.target, str(dest), device.options())
    changed = _bundle(tmp_path / "other", "v1", extra_file=b"different content")
    with pytest.raises(ship.ShipError, match="already exists .* with a different manifest"):
        ship.ship_bundle(changed, device.target, str(dest), device.options())


def test_host_keys_are_verified(device: Device, tmp_path: Path) -> None:
    dest = tmp_path / "device"
    bundle = _bundle(tmp_path, "v1")
    unknown = tmp_path / "empty_known_hosts"
    unknown.write_text("")
    with pytest.raises(ship.ShipError, match="refused the device's host key.*nothing was sent"):
        ship.ship_bundle(bundle, device.target, str(dest), device.options(known_hosts=unknown))
    assert not dest.exists()

    # Opt-in trust on first use records the key...
    ship.ship_bundle(bundle, device.target, str(dest), device.options(known_hosts=unknown, accept_new=True))
    assert "ssh-ed25519" in unknown.read_text()
    # ...and a changed key is refused even then.
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    forged = tmp_path / "forged_known_hosts"
    forged.write_text(f"[127.0.0.1]:{device.port} {(tmp_path / 'other_key.pub').read_text()}")
    with pytest.raises(ship.ShipError, match="refused the device's host key"):
        ship.rollback_release(device.target, str(dest), device.options(known_hosts=forged, accept_new=True))


def test_a_broken_local_bundle_is_not_shipped(device: Device, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "v1")
    (bundle / "models" / "yolo.onnx").write_bytes(b"truncated")
    with pytest.raises(InputError, match="yolo.onnx does not match its sha256"):
        ship.ship_bundle(bundle, device.target, str(tmp_path / "device"), device.options())


def test_target_parsing_and_ssh_options() -> None:
    assert ship.SshTarget.parse("pi@raspberrypi.local", 2222) == ship.SshTarget("pi", "raspberrypi.local", 2222)
    assert ship.SshTarget.parse("10.0.0.7").destination == "10.0.0.7"
    for bad in ("pi@", "-oProxyCommand=x", "pi@host name"):
        with pytest.raises(InputError):
            ship.SshTarget.parse(bad)
    command = ship.SshOptions(known_hosts=Path("/k")).command(ship.SshTarget("pi", "h", 22))
    assert "StrictHostKeyChecking=yes" in command and "UserKnownHostsFile=/k" in command and "BatchMode=yes" in command
    assert "StrictHostKeyChecking=accept-new" in ship.SshOptions(accept_new_host_key=True).command(ship.SshTarget(None, "h"))


def test_newest_bundle_is_the_default(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    for version, created in (("a", "2025-01-01T00:00:00+00:00"), ("b", "2025-03-01T00:00:00+00:00")):
        folder = root / version
        (folder / "models").mkdir(parents=True)
        (folder / "models" / "m.onnx").write_bytes(b"m")
        data = manifest_dict([semantic_entry("m", "models/m.onnx", folder)], version=version)
        data["created"] = created
        write_manifest(folder, data)
    assert ship.newest_bundle(root) == root / "b"
    with pytest.raises(InputError, match="holds no bundle"):
        ship.newest_bundle(tmp_path / "none")


UNIT = Path(__file__).resolve().parents[1] / "deploy" / "systemd" / ship.DEFAULT_SERVICE


def test_ship_restarts_the_runtime_service_when_it_is_installed(device: Device, tmp_path: Path, capsys) -> None:
    """Real systemctl on the "device": the unit is installed and enabled as the README's one-liner does.

    No systemd user manager runs in a test container, so the restart itself fails there, which must be
    reported (release switched, service not restarted, what to run); `state=restarted` needs a real Pi.
    """
    systemctl = _which("systemctl")
    if systemctl is None:
        pytest.skip("systemctl not installed: the device side of the service restart cannot be exercised")
    dest = tmp_path / "device"
    v1 = _bundle(tmp_path, "v1")
    (v1 / "runtime" / "systemd").mkdir()
    shutil.copyfile(UNIT, v1 / "runtime" / "systemd" / ship.DEFAULT_SERVICE)  # where `idd-edge bundle` puts it (deploy/ copied)
    result = ship.ship_bundle(v1, device.target, str(dest), device.options())
    assert result.service == "not-installed"  # nothing enabled yet: left alone

    shipped_unit = dest / "current" / "runtime" / "systemd" / ship.DEFAULT_SERVICE
    units = device.config_home / "systemd" / "user"
    units.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shipped_unit, units / ship.DEFAULT_SERVICE)
    env = {**os.environ, "XDG_CONFIG_HOME": str(device.config_home)}
    subprocess.run([systemctl, "--user", "enable", ship.DEFAULT_SERVICE], check=True, capture_output=True, env=env)
    try:
        with pytest.raises(ship.ShipError, match=r"current -> v2, but restarting idd-edge-runtime.service failed \(.+\).*systemctl --user restart"):
            ship.ship_bundle(_bundle(tmp_path, "v2"), device.target, str(dest), device.options())
        assert _current(dest) == "releases/v2"  # the switch happened before the restart was tried
        with pytest.raises(ship.ShipError, match="current -> v1, but restarting"):
            ship.rollback_release(device.target, str(dest), device.options())
        assert _current(dest) == "releases/v1"
        assert main(device.args(dest, "--bundle", str(_bundle(tmp_path / "again", "v2")), "--no-restart")) == 0
        assert "restarted" not in capsys.readouterr().out
    finally:
        subprocess.run([systemctl, "--user", "disable", ship.DEFAULT_SERVICE], capture_output=True, env=env)


def test_the_runtime_unit_is_valid_and_runs_the_current_release(tmp_path: Path) -> None:
    """systemd's own checker on the unit the bundle carries, with a home where its venv python exists."""
    analyze = _which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    text = UNIT.read_text()
    assert "ExecStart=%h/idd-edge/venv/bin/python -m idd_edge_runtime.cli --serve --bundle %h/idd-edge/current" in text
    assert "Environment=PYTHONPATH=%h/idd-edge/current/runtime/src" in text and "Restart=on-failure" in text
    venv_bin = tmp_path / "home" / "idd-edge" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    env = {**os.environ, "HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(runtime_dir)}
    checked = subprocess.run([analyze, "--user", "verify", str(UNIT)], capture_output=True, text=True, env=env, timeout=60)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked.stdout + checked.stderr
    # The checker does complain about a broken unit (so its silence above means something).
    broken = tmp_path / ship.DEFAULT_SERVICE
    broken.write_text(text.replace("Restart=on-failure", "Restart=sometimes"))
    complaint = subprocess.run([analyze, "--user", "verify", str(broken)], capture_output=True, text=True, env=env, timeout=60)
    assert "restart specifier" in complaint.stdout + complaint.stderr
