"""`idd-edge ship --host USER@HOST`: copy a bundle to the device over SSH and switch to it atomically.

Device layout under DEST (default `idd-edge`, i.e. ~/idd-edge; the runtime's default bundle is
~/idd-edge/current)::

    DEST/releases/<version>/             verified releases, never modified once in place
    DEST/releases/.<version>.partial/    an upload in progress (rsync resumes it after an interruption)
    DEST/current -> releases/<version>   the active release: a relative symlink replaced by rename
    DEST/history                         activation stack, one version per line (last = current)

Shipping uploads into the `.partial` folder with rsync (hard-linking files unchanged since the current
release), verifies every file's SHA-256 on the device, renames the folder into `releases/`, then points
`current` at it with `ln -s` + `mv -T` (rename(2): atomic, the runtime sees the old or the new release,
never a mix). An interrupted upload or a failed verification leaves `current` untouched.
`--rollback` pops the history and points `current` at the previous release.
After either switch, the runtime's systemd user unit (`deploy/systemd/idd-edge-runtime.service`, in the
bundle as `runtime/systemd/`) is restarted when it is enabled on the device, so `--serve` runs the new
release; a device without it is left alone, and a failed restart is an error naming the fix.

SSH host keys are verified (StrictHostKeyChecking=yes): an unknown or changed key is refused unless the
user opts into trust-on-first-use with --accept-new-host-key. The device needs sh, GNU coreutils
(sha256sum, mv -T) and rsync, as Raspberry Pi OS has them.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from idd_edge import config
from idd_edge.errors import InputError, StageError

log = logging.getLogger(__name__)

DEFAULT_DEST = "idd-edge"
#: Exit status of the remote verification script when a checksum does not match.
_VERIFY_FAILED = 3

_STATE_SCRIPT = r"""
set -eu
dest=$1; version=$2
mkdir -p "$dest/releases"
if [ -L "$dest/current" ]; then echo "current=$(readlink "$dest/current")"; else echo "current="; fi
if [ -f "$dest/releases/$version/manifest.json" ]; then
  echo "existing=$(sha256sum < "$dest/releases/$version/manifest.json" | cut -d' ' -f1)"
elif [ -e "$dest/releases/$version" ]; then
  echo "existing=incomplete"
else
  echo "existing=none"
fi
if [ -f "$dest/history" ]; then sed 's/^/history=/' "$dest/history"; fi
for d in "$dest"/releases/*/; do [ -d "$d" ] && echo "release=$(basename "$d")"; done
for tool in sha256sum rsync; do command -v "$tool" >/dev/null 2>&1 || echo "missing=$tool"; done
"""

# stdin: the `sha256sum` check list of every bundle file. argv: dest version source(partial|release)
_ACTIVATE_SCRIPT = r"""
set -eu
dest=$1; version=$2; source=$3
releases="$dest/releases"
if [ "$source" = partial ]; then dir="$releases/.$version.partial"; else dir="$releases/$version"; fi
if ! (cd "$dir" && sha256sum --check --strict --quiet -); then
  if [ "$source" = partial ]; then rm -rf "$dir"; fi
  exit 3
fi
if [ "$source" = partial ]; then
  rm -rf "$releases/$version"
  mv -T "$dir" "$releases/$version"
fi
ln -sfn "releases/$version" "$dest/.current.new"
mv -T "$dest/.current.new" "$dest/current"
{ if [ -f "$dest/history" ]; then cat "$dest/history"; fi; echo "$version"; } > "$dest/.history.new"
mv -f "$dest/.history.new" "$dest/history"
sync
"""

# stdin: the new history. argv: dest version
_SWITCH_SCRIPT = r"""
set -eu
dest=$1; version=$2
[ -f "$dest/releases/$version/manifest.json" ] || { echo "release $version is gone" >&2; exit 4; }
ln -sfn "releases/$version" "$dest/.current.new"
mv -T "$dest/.current.new" "$dest/current"
cat > "$dest/.history.new"
mv -f "$dest/.history.new" "$dest/history"
sync
"""


# argv: unit. Prints state=not-installed|restarted|failed (+ error= lines).
_RESTART_SCRIPT = r"""
set -u
unit=$1
if ! command -v systemctl >/dev/null 2>&1 || ! systemctl --user is-enabled --quiet "$unit" 2>/dev/null; then
  echo "state=not-installed"; exit 0
fi
# A non-interactive SSH session may lack the user manager's address; it lives here on systemd systems.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}"
if out=$(systemctl --user restart "$unit" 2>&1); then echo "state=restarted"; else echo "state=failed"; printf '%s\n' "$out" | sed 's/^/error=/'; fi
"""

#: The systemd user unit the runtime ships (deploy/systemd/); `idd-edge ship --service` names another.
DEFAULT_SERVICE = "idd-edge-runtime.service"


class ShipError(StageError):
    """Shipping failed; the message says what happened on the device and what to do."""


@dataclass(frozen=True)
class SshTarget:
    user: str | None
    host: str
    port: int = 22

    @classmethod
    def parse(cls, text: str, port: int = 22) -> SshTarget:
        user, _, host = text.rpartition("@")
        if not host or any(c.isspace() for c in text) or host.startswith("-"):
            raise InputError(None, f"--host must look like USER@HOST or HOST, got {text!r}")
        if not 0 < port < 65536:
            raise InputError(None, f"--port must be 1-65535, got {port}")
        return cls(user or None, host, port)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return f"{self.destination}:{self.port}"


@dataclass(frozen=True)
class SshOptions:
    """How to reach the device; host keys are always checked against known_hosts."""

    known_hosts: Path | None = None  # default: ssh's own (~/.ssh/known_hosts)
    identity: Path | None = None
    config_file: Path | None = None
    accept_new_host_key: bool = False  # trust on first use; a changed key is still refused
    connect_timeout_s: int = 15

    def command(self, target: SshTarget) -> list[str]:
        """The ssh command line up to (not including) the destination."""
        args = ["ssh", "-p", str(target.port)]
        if self.config_file is not None:
            args += ["-F", str(self.config_file)]
        args += [
            "-o", "BatchMode=yes",
            "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new_host_key else 'yes'}",
            "-o", f"ConnectTimeout={self.connect_timeout_s}",
        ]  # fmt: skip
        if self.known_hosts is not None:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.identity is not None:
            args += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return args


@dataclass
class RemoteState:
    current: str | None  # active version, None when nothing was shipped yet
    existing: str  # sha256 of releases/<version>/manifest.json, "none" or "incomplete"
    history: list[str]
    releases: list[str]


@dataclass
class ShipResult:
    version: str
    previous: str | None
    uploaded: bool  # False: the release was already on the device (verified and re-activated)
    service: str = "not-installed"  # the runtime service after the switch: "restarted" or "not-installed"


def restart_service(target: SshTarget, ssh: SshOptions, service: str, version: str) -> str:
    """Restart the runtime's systemd user unit on the device when it is enabled there; what happened."""
    result = _run_remote(target, ssh, _RESTART_SCRIPT, [service])
    if result.returncode != 0:
        raise _ssh_failure(target, result, f"restarting {service} after switching to {version}")
    lines = result.stdout.splitlines()
    state = next((line.partition("=")[2] for line in lines if line.startswith("state=")), "")
    if state == "failed":
        errors = " ".join(line.partition("=")[2] for line in lines if line.startswith("error="))
        raise ShipError(
            f"{target}: current -> {version}, but restarting {service} failed ({errors.strip() or 'no message'}), so it "
            f"still runs the release it started with: on the device, `systemctl --user restart {service}` and "
            f"`journalctl --user -u {service}`"
        )
    log.info("%s: %s %s", target, service, state)
    return state


def _remote_path(dest: str) -> str:
    if dest.startswith("~/"):
        dest = dest[2:]  # ssh and rsync both start in the remote home directory
    if not dest or dest in (".", "/") or "\n" in dest:
        raise InputError(None, f"--dest {dest!r} is not a usable directory on the device")
    return dest.rstrip("/")


def _run_remote(target: SshTarget, ssh: SshOptions, script: str, args: Sequence[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    remote = " ".join(["sh", "-c", shlex.quote(script), "idd-edge-ship", *map(shlex.quote, args)])
    command = ssh.command(target) + [target.destination, remote]
    log.debug("remote: %s", shlex.join(command[:-1]))
    return subprocess.run(command, input=stdin, capture_output=True, text=True)


def _ssh_failure(target: SshTarget, result: subprocess.CompletedProcess[str], what: str) -> ShipError:
    stderr = (result.stderr or "").strip()
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return ShipError(
            f"{target}: SSH refused the device's host key (unknown or changed), so nothing was sent. Check the key's "
            f"fingerprint on the device (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then add it to your "
            f"known_hosts (`ssh-keyscan -p {target.port} {target.host}` after comparing) or pass --known-hosts FILE; "
            f"--accept-new-host-key trusts a key seen for the first time"
        )
    return ShipError(f"{target}: {what} failed (exit {result.returncode}): {stderr[-800:] or 'no message'}")


def remote_state(target: SshTarget, dest: str, version: str, ssh: SshOptions) -> RemoteState:
    result = _run_remote(target, ssh, _STATE_SCRIPT, [dest, version])
    if result.returncode != 0:
        raise _ssh_failure(target, result, "reading the release state")
    values: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        values.setdefault(key, []).append(value)
    missing = values.get("missing", [])
    if missing:
        raise ShipError(f"{target}: the device lacks {', '.join(missing)}: `sudo apt install rsync coreutils` on it")
    current_link = values.get("current", [""])[0]
    return RemoteState(
        current=current_link.rpartition("/")[2] or None,
        existing=values.get("existing", ["none"])[0],
        history=[v for v in values.get("history", []) if v],
        releases=sorted(values.get("release", [])),
    )


def checksum_list(bundle: Path) -> str:
    """`sha256sum --check` input for every file of the bundle (paths relative to the bundle)."""
    from idd_edge_runtime.manifest import bundle_file_list, sha256_file

    lines = []
    for relative in bundle_file_list(bundle):
        if "\n" in relative or "\\" in relative:
            raise InputError(bundle / relative, "file names with newlines or backslashes cannot be verified on the device")
        lines.append(f"{sha256_file(bundle / relative)}  {relative}")
    return "\n".join(lines) + "\n"


def _check_local_tools() -> None:
    missing = [tool for tool in ("ssh", "rsync") if shutil.which(tool) is None]
    if missing:
        raise ShipError(f"{' and '.join(missing)} not found on this machine: install openssh-client and rsync")


def _rsync(bundle: Path, target: SshTarget, ssh: SshOptions, remote_dir: str, link_dest: str | None, bwlimit_kbps: int | None) -> None:
    command = [
        "rsync",
        "--recursive", "--times", "--perms", "--copy-links", "--partial", "--delete",
        "--rsh", shlex.join(ssh.command(target)),
    ]  # fmt: skip
    if link_dest:
        # Files unchanged since the current release become hard links instead of transfers. --checksum makes
        # "unchanged" mean equal content: size + mtime alone would link a same-sized manifest written in the
        # same second as the old one.
        command += [f"--link-dest={link_dest}", "--checksum"]
    if bwlimit_kbps:
        command.append(f"--bwlimit={bwlimit_kbps}")
    if sys.stdout.isatty():
        command.append("--info=progress2")
    command += [f"{bundle}/", f"{target.destination}:{remote_dir}/"]
    log.info("uploading %s to %s:%s", bundle, target, remote_dir)
    try:
        result = subprocess.run(command, stdout=None if sys.stdout.isatty() else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except KeyboardInterrupt:
        raise ShipError(f"{target}: upload interrupted; `current` is unchanged and the next ship resumes it") from None
    if result.returncode != 0:
        if "Host key" in (result.stderr or "") or "REMOTE HOST IDENTIFICATION" in (result.stderr or ""):
            raise _ssh_failure(target, result, "rsync upload")
        raise ShipError(
            f"{target}: rsync upload failed (exit {result.returncode}): {(result.stderr or '').strip()[-800:]}; "
            "`current` is unchanged and the next ship resumes the upload"
        )


def ship_bundle(
    bundle: Path,
    target: SshTarget,
    dest: str = DEFAULT_DEST,
    ssh: SshOptions = SshOptions(),
    bwlimit_kbps: int | None = None,
    service: str | None = DEFAULT_SERVICE,
) -> ShipResult:
    """Upload `bundle` into DEST/releases/<version>/ on the device, verify it there, make it current.

    Then restart `service` (a systemd user unit) when it is enabled on the device; None never restarts.
    """
    from idd_edge_runtime.manifest import MANIFEST_NAME, ManifestError, load_bundle, sha256_file

    _check_local_tools()
    dest = _remote_path(dest)
    try:
        manifest = load_bundle(bundle)  # never ship a bundle that is already broken here
    except ManifestError as exc:
        raise InputError(exc.path, exc.problem) from None
    version = manifest.version
    checks = checksum_list(bundle)
    manifest_sha = sha256_file(bundle / MANIFEST_NAME)
    state = remote_state(target, dest, version, ssh)

    uploaded = False
    if state.existing == manifest_sha:
        log.info("release %s is already on %s; verifying it and switching to it", version, target)
        source = "release"
    elif state.existing not in ("none", "incomplete"):
        raise ShipError(
            f"{target}: release {version} already exists in {dest}/releases with a different manifest; releases are "
            "immutable, so build the bundle with a new version"
        )
    else:
        link_dest = f"../{state.current}" if state.current else None
        _rsync(bundle, target, ssh, f"{dest}/releases/.{version}.partial", link_dest, bwlimit_kbps)
        source, uploaded = "partial", True

    result = _run_remote(target, ssh, _ACTIVATE_SCRIPT, [dest, version, source], stdin=checks)
    if result.returncode == _VERIFY_FAILED:
        raise ShipError(
            f"{target}: checksum verification of release {version} failed on the device "
            f"({result.stdout.strip()[-400:] or result.stderr.strip()[-400:]}); `current` still points to "
            f"{state.current or 'nothing'} and the upload was discarded: ship again"
        )
    if result.returncode != 0:
        raise _ssh_failure(target, result, f"activating release {version}")
    log.info("%s: current -> %s (previous: %s)", target, version, state.current or "none")
    restarted = restart_service(target, ssh, service, version) if service else "not-installed"
    return ShipResult(version=version, previous=state.current, uploaded=uploaded, service=restarted)


def rollback_release(
    target: SshTarget, dest: str = DEFAULT_DEST, ssh: SshOptions = SshOptions(), service: str | None = DEFAULT_SERVICE
) -> ShipResult:
    """Point DEST/current back at the release active before the current one (popping the history)."""
    _check_local_tools()
    dest = _remote_path(dest)
    state = remote_state(target, dest, "-", ssh)
    if state.current is None:
        raise ShipError(f"{target}: nothing has been shipped to {dest} yet, so there is nothing to roll back")
    history = [v for i, v in enumerate(state.history) if i == 0 or v != state.history[i - 1]]
    if not history or history[-1] != state.current:
        log.warning("history of %s does not end with the current release %s; using the current release as its top", dest, state.current)
        history.append(state.current)
    history.pop()
    while history and history[-1] not in state.releases:
        log.warning("release %s is no longer on the device; skipping it", history.pop())
    if not history:
        raise ShipError(f"{target}: no earlier release to roll back to (current: {state.current})")
    previous = history[-1]
    result = _run_remote(target, ssh, _SWITCH_SCRIPT, [dest, previous], stdin="".join(f"{v}\n" for v in history))
    if result.returncode != 0:
        raise _ssh_failure(target, result, f"switching back to {previous}")
    log.info("%s: current -> %s (rolled back from %s)", target, previous, state.current)
    restarted = restart_service(target, ssh, service, previous) if service else "not-installed"
    return ShipResult(version=previous, previous=state.current, uploaded=False, service=restarted)


def newest_bundle(bundle_root: Path) -> Path:
    """The bundle under `bundle_root` (artifacts/bundle/<version>/) whose manifest was created last."""
    from idd_edge_runtime.manifest import ManifestError, load_manifest

    candidates = []
    for child in sorted(bundle_root.iterdir()) if bundle_root.is_dir() else []:
        if (child / "manifest.json").is_file():
            try:
                candidates.append((load_manifest(child).created, child))
            except ManifestError as exc:
                log.warning("skipping %s: %s", child, exc)
    if not candidates:
        raise InputError(bundle_root, "holds no bundle (run `idd-edge bundle`, or pass --bundle DIR)")
    return max(candidates)[1]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ship", help="copy a bundle to the device over SSH and switch to it (or --rollback)")
    parser.add_argument("--host", required=True, help="USER@HOST of the device")
    parser.add_argument("--port", type=int, default=22)
    parser.add_argument("--dest", default=DEFAULT_DEST, help=f"release directory on the device (default ~/{DEFAULT_DEST})")
    parser.add_argument("--bundle", type=Path, help="bundle directory (default: the newest under params bundle.out)")
    parser.add_argument("--rollback", action="store_true", help="switch back to the previous release instead of shipping")
    parser.add_argument("--known-hosts", type=Path, help="known_hosts file with the device's host key (default: ssh's)")
    parser.add_argument("--identity", type=Path, help="SSH private key to use")
    parser.add_argument("--ssh-config", type=Path, help="ssh_config file (default: ssh's)")
    parser.add_argument("--accept-new-host-key", action="store_true", help="trust the device's key on first contact (a changed key is still refused)")
    parser.add_argument("--bwlimit", type=int, help="upload limit in KiB/s (rsync --bwlimit)")
    parser.add_argument("--service", default=DEFAULT_SERVICE, help=f"systemd user unit to restart after the switch when enabled (default {DEFAULT_SERVICE})")
    parser.add_argument("--no-restart", action="store_true", help="switch the release but leave the service running")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    target = SshTarget.parse(args.host, args.port)
    for option in ("known_hosts", "identity", "ssh_config"):
        path = getattr(args, option)
        if path is not None and not path.is_file():
            raise InputError(path, f"--{option.replace('_', '-')} file does not exist")
    ssh = SshOptions(known_hosts=args.known_hosts, identity=args.identity, config_file=args.ssh_config, accept_new_host_key=args.accept_new_host_key)
    service = None if args.no_restart else args.service
    if args.rollback:
        result = rollback_release(target, args.dest, ssh, service)
        print(f"{target}: current -> {result.version} (was {result.previous}){_service_note(result, service)}")
        return 0
    bundle = args.bundle
    if bundle is None:
        bundle = newest_bundle(Path(config.section(config.load_params(), "bundle")["out"]))
    result = ship_bundle(bundle, target, args.dest, ssh, args.bwlimit, service)
    action = "uploaded and verified" if result.uploaded else "already on the device, verified"
    print(f"{target}: release {result.version} {action}; current -> {result.version} (was {result.previous or 'nothing'}){_service_note(result, service)}")
    return 0


def _service_note(result: ShipResult, service: str | None) -> str:
    return f"; {service} restarted" if result.service == "restarted" else ""
