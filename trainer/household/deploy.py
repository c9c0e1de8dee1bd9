"""``twinlock deploy``: ship a signed bundle to a door over SSH, or onto a card for it.

Two kinds of target:

- ``ssh://[USER@]HOST[:PORT][/PATH]``: the real OpenSSH client binaries (``ssh`` and ``sftp``),
  never paramiko, so the user's keys, agent, ``known_hosts`` and ``~/.ssh/config`` behave exactly
  as they do in a terminal. PATH defaults to ``/var/spool/twinlock/``; a PATH that ends in
  ``/`` (or names an existing remote folder) keeps the bundle's file name, any other PATH is the
  file name on the door.
- ``DIR`` or ``file://DIR``: an existing local folder (a mounted SD card or share).

Why it is built the way it is:

- **Never prompt.** ``-o BatchMode=yes`` always (a CLI that hangs on a hidden password or
  host-key prompt is worse than one that fails), ``-o ConnectTimeout=10``, and an overall
  ``timeout_s`` after which the step's process group is killed.
- **The door never sees half a bundle.** The upload goes to ``<dest>.part`` (fsynced on the door by
  ``put -f``) and is renamed onto ``<dest>`` with ``mv -f`` in the same folder, which is atomic;
  the daemon only ever reads whole files. The card path writes a hidden temporary file, fsyncs
  it, renames it and fsyncs the folder so the rename survives pulling the card
  (``daemon/storage/files.py``).
- **sftp -b rather than scp.** scp changed meaning under our feet: OpenSSH 9.0 switched it to the
  SFTP protocol, where remote paths must *not* be shell-quoted, while the legacy protocol (``-O``,
  or older clients) needs them shell-quoted; which one runs depends on the client's version, so no
  one quoting is right for both. ``sftp -b`` parses paths itself with one documented rule set (no
  remote shell), aborts the batch with a non-zero exit on the first failure, implies BatchMode,
  and ``put -f`` asks the door to fsync the file before we rename it. The price is needing the
  SFTP subsystem on the door, which Raspberry Pi OS ships with openssh-server (and which
  OpenSSH >= 9.0's scp needs anyway).
- **One handshake.** The four steps share one SSH connection (``ControlMaster``/``ControlPath`` in
  a private temporary folder, closed at the end): over a Pi's Wi-Fi each extra handshake costs
  about half a second. ``-o ControlMaster=no`` in ``ssh_options`` turns this off, because the
  user's options come before ours and OpenSSH keeps the first value it sees.
- **Errors name the step** (``connect``, ``upload``, ``rename``, ``reload``; ``copy`` for a card)
  and carry the tail of the tool's stderr plus a hint for the usual causes (unknown host key, key
  not accepted, nothing listening).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import posixpath
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from twinlock.daemon.errors import DataNotFoundError, UsageError
from twinlock.daemon.processes import kill_group, output_tail
from twinlock.daemon.storage.closing import Closing
from twinlock.daemon.storage.files import atomic_writer

from ..errors import DeployError

logger = logging.getLogger(__name__)

DEFAULT_REMOTE_DIR = "/var/spool/twinlock/"
DEFAULT_RELOAD_COMMAND = "sudo systemctl reload twinlockd"
PART_SUFFIX = ".part"
CONNECT_TIMEOUT_S = 10
#: seconds allowed for best-effort clean-up commands after a failure
_CLEANUP_TIMEOUT_S = 5.0
#: unix socket paths are limited to 108 bytes; %C expands to 40 hex characters
_MAX_CONTROL_DIR_LEN = 60
_STDERR_TAIL_LINES = 15
_STDERR_TAIL_CHARS = 2000


@dataclass(frozen=True)
class SshTarget:
    """A parsed ``ssh://`` target. ``path`` ends with ``/`` when it names a folder."""

    user: str | None
    host: str
    port: int | None
    path: str

    @property
    def destination(self) -> str:
        """``[user@]host`` as ssh takes it."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def sftp_destination(self) -> str:
        """``[user@]host`` as sftp takes it: an IPv6 address needs brackets (``:`` is special)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host


@dataclass(frozen=True)
class LocalTarget:
    """A local folder (a mounted SD card or share) the bundle is copied into."""

    folder: Path


@dataclass
class DeployReport:
    """What a deployment did; ``steps`` lists the commands run, for ``--verbose``."""

    target: str
    remote_path: str
    bytes: int
    seconds: float
    reloaded: bool
    steps: list[str] = field(default_factory=list)
    #: what the user still has to do, if anything (e.g. insert the card)
    note: str = ""

    def summary(self) -> str:
        """One line for people."""
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        done = "reloaded" if self.reloaded else "not reloaded"
        line = (f"deployed {self.bytes} bytes to {self.remote_path} in {self.seconds:.2f} s "
                f"({rate:.1f} MB/s), {done}")
        return f"{line}; {self.note}" if self.note else line


# -- parsing ------------------------------------------------------------------------------------


def parse_target(target: str) -> SshTarget | LocalTarget:
    """``ssh://[USER@]HOST[:PORT][/PATH]``, ``file://DIR`` or ``DIR`` -> a target.

    Only the syntax is checked here (a local folder must exist: that is checked by ``deploy``).
    """
    text = target.strip()
    if not text:
        raise UsageError("deploy target is empty: give ssh://USER@HOST[:PORT][/PATH] or a folder")
    if "\n" in text or "\r" in text or "\0" in text:
        raise UsageError(f"deploy target {target!r} contains a line break or NUL")
    scheme_match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme_match is None:
        return LocalTarget(Path(text).expanduser())
    scheme = scheme_match.group(1).lower()
    if scheme == "file":
        return _parse_file_url(target, text)
    if scheme == "ssh":
        return _parse_ssh_url(target, text)
    raise UsageError(f"deploy target {target!r}: unsupported scheme {scheme!r}; "
                     "use ssh://USER@HOST[:PORT][/PATH] or a local folder")


def _parse_file_url(target: str, text: str) -> LocalTarget:
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"deploy target {target!r}: file:// URLs name a local folder "
                         f"(file:///media/card), not host {parts.netloc!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"deploy target {target!r}: a file:// URL takes no ?query or #fragment")
    path = unquote(parts.path)
    if not path:
        raise UsageError(f"deploy target {target!r}: the file:// URL names no folder")
    return LocalTarget(Path(path))


def _parse_ssh_url(target: str, text: str) -> SshTarget:
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # e.g. an invalid [IPv6] host
        raise UsageError(f"deploy target {target!r}: {exc}") from exc
    if parts.query or parts.fragment:
        raise UsageError(f"deploy target {target!r}: ssh:// URLs take no ?query or #fragment")
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    if not hostport:
        raise UsageError(f"deploy target {target!r}: no host; use ssh://USER@HOST[:PORT][/PATH]")
    user: str | None = None
    if "@" in netloc:
        if ":" in userinfo:
            raise UsageError(f"deploy target {target!r}: passwords in the URL are not supported; "
                             "deploy uses SSH keys (see --identity)")
        user = unquote(userinfo)
        if not user:
            raise UsageError(f"deploy target {target!r}: empty user name before '@'")
        if user.startswith("-") or any(c.isspace() for c in user):
            raise UsageError(f"deploy target {target!r}: invalid user name {user!r}")

    port_text = ""
    if hostport.startswith("["):
        host, sep, rest = hostport[1:].partition("]")
        if not sep:
            raise UsageError(f"deploy target {target!r}: unclosed '[' in an IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise UsageError(f"deploy target {target!r}: {host!r} is not an IPv6 address") from exc
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"deploy target {target!r}: unexpected {rest!r} after the address")
            port_text = rest[1:]
            if not port_text:
                raise UsageError(f"deploy target {target!r}: empty port after ':'")
    else:
        host, sep, port_text = hostport.partition(":")
        if sep and not port_text:
            raise UsageError(f"deploy target {target!r}: empty port after ':'")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", host) or host.startswith("-"):
            raise UsageError(f"deploy target {target!r}: {host!r} is not a host name or address")

    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise UsageError(f"deploy target {target!r}: port must be a number from 1 to 65535 "
                             f"(got {port_text!r})")
        port = int(port_text)

    path = unquote(parts.path)
    if path in ("", "/"):
        # ssh://door/ almost always means "the usual place", never the door's root folder
        path = DEFAULT_REMOTE_DIR
    if "\n" in path or "\r" in path or "\0" in path:
        raise UsageError(f"deploy target {target!r}: the path contains a line break or NUL")
    return SshTarget(user=user, host=host, port=port, path=path)


# -- the entry point ----------------------------------------------------------------------------


def deploy(
    bundle: Path,
    target: str,
    reload_command: str | None = DEFAULT_RELOAD_COMMAND,
    ssh_options: list[str] | None = None,
    identity: Path | None = None,
    timeout_s: float = 60,
    progress: Callable[[str], None] | None = None,
) -> DeployReport:
    """Copy ``bundle`` atomically to ``target`` and (over SSH) run ``reload_command`` there.

    ``ssh_options`` are extra arguments given to both ``ssh`` and ``sftp`` (``-o KEY=VALUE``,
    ``-F FILE``, ``-J JUMP``, ``-v``); the port belongs in the URL. ``timeout_s`` bounds the whole
    deployment. ``progress`` hears each step as it starts (``copy``, ``reload``: the page's
    Update shows them). Raises ``DataNotFoundError`` / ``UsageError`` for bad arguments and
    ``DeployError`` (with ``step``) when a step fails.
    """
    progress = progress or (lambda step: None)
    bundle = Path(bundle)
    if not bundle.is_file():
        if bundle.exists():
            raise UsageError(f"bundle {bundle} is not a file (give the bundle file itself)")
        raise DataNotFoundError(f"bundle {bundle} does not exist (make one with `twinlock bundle`)")
    if timeout_s <= 0:
        raise UsageError(f"timeout must be positive (got {timeout_s})")
    parsed = parse_target(target)
    if isinstance(parsed, LocalTarget):
        if reload_command:
            logger.info("target %s is a folder: the reload command is not run", target)
        progress("copy")
        return _deploy_local(bundle, target, parsed)
    return _deploy_ssh(bundle, target, parsed, reload_command, list(ssh_options or []), identity,
                       timeout_s, progress)


# -- local folder -------------------------------------------------------------------------------


def _deploy_local(bundle: Path, target: str, parsed: LocalTarget) -> DeployReport:
    """Copy into an existing folder through a hidden temporary file: fsync, rename, fsync the
    folder (:func:`atomic_writer`); the door's drop folder ignores hidden names."""
    folder = parsed.folder
    if not folder.exists():
        hint = ""
        if re.match(r"^[\w.-]+(@[\w.-]+)?:", target):
            hint = "; for a door over SSH write ssh://USER@HOST/PATH"
        raise DataNotFoundError(f"target folder {folder} does not exist "
                                f"(is the SD card or share mounted?){hint}")
    if not folder.is_dir():
        raise UsageError(f"target {folder} is not a folder: name the folder to copy the bundle into")
    start = time.monotonic()
    dest = folder / bundle.name
    steps = [f"copy {bundle} -> a hidden temporary file in {folder}", "fsync it",
             f"rename it -> {dest}", f"fsync {folder}"]
    size = bundle.stat().st_size
    logger.info("copying %s (%d bytes) to %s", bundle, size, dest)
    try:
        # mode None: a card's file system (FAT) may refuse a chmod; its mount options decide
        with bundle.open("rb") as src, atomic_writer(dest, None) as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    except OSError as exc:
        step = "rename" if exc.filename2 is not None else "copy"  # os.replace names both files
        raise DeployError(f"deploy to {target} failed at step {step!r}: could not write {dest}: "
                          f"{exc}", step=step) from exc
    seconds = time.monotonic() - start
    return DeployReport(
        target=target, remote_path=str(dest), bytes=size, seconds=seconds, reloaded=False,
        steps=steps,
        note="no reload over a folder: unmount the card, put it in the door and restart the "
             "daemon there (or reload it) to load the bundle")


# -- ssh ----------------------------------------------------------------------------------------


def _deploy_ssh(bundle: Path, target: str, parsed: SshTarget, reload_command: str | None,
                ssh_options: list[str], identity: Path | None, timeout_s: float,
                progress: Callable[[str], None] = lambda step: None) -> DeployReport:
    for option in ssh_options:
        if option in ("-p", "-P") or re.fullmatch(r"-[pP]\d+", option):
            raise UsageError("put the port in the target URL (ssh://USER@HOST:PORT/...), "
                             "not in the ssh options: ssh and sftp spell it differently")
    if identity is not None:
        identity = Path(identity).expanduser()
        if not identity.is_file():
            raise DataNotFoundError(f"SSH identity file {identity} does not exist")
    missing = [tool for tool in ("ssh", "sftp") if shutil.which(tool) is None]
    if missing:
        raise DeployError(f"deploy to {target} failed at step 'connect': the OpenSSH client is "
                          f"not installed (missing {', '.join(missing)}; apt install "
                          "openssh-client)", step="connect")
    start = time.monotonic()
    size = bundle.stat().st_size
    with _SshSession(parsed, target, ssh_options, identity, start + timeout_s, timeout_s) as sess:
        progress("copy")
        dest = sess.probe_destination(bundle.name)
        part = dest + PART_SUFFIX
        sess.upload(bundle, part)
        sess.rename(part, dest)
        reloaded = False
        command = (reload_command or "").strip()
        if command:
            progress("reload")
            sess.reload(command, dest)
            reloaded = True
        steps = list(sess.steps)
    seconds = time.monotonic() - start
    report = DeployReport(target=target, remote_path=dest, bytes=size, seconds=seconds,
                          reloaded=reloaded, steps=steps)
    logger.info("%s", report.summary())
    return report


def _sftp_quote(path: str) -> str:
    """Quote one path for an sftp batch line (sftp's own parser, not a shell).

    Inside double quotes sftp treats glob characters literally, ``\\"`` as a quote and ``\\\\`` as
    one backslash (after its glob-unescaping), so escaping those two is enough.
    """
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _connect_hint(stderr: str) -> str:
    """A sentence for the usual reasons ssh refuses, so people need not decode ssh's words."""
    text = stderr.lower()
    if "remote host identification has changed" in text:
        return ("the door's host key CHANGED since it was recorded: if the door was reinstalled, "
                "remove the old key with `ssh-keygen -R HOST`; otherwise stop and investigate")
    if "host key verification failed" in text or "no matching host key" in text:
        return ("the door's host key is not in known_hosts and BatchMode never asks: connect once "
                "with `ssh USER@HOST` to check and accept it, then deploy again")
    if "permission denied" in text:
        return ("the door did not accept any of our keys: install the public key on the door "
                "(ssh-copy-id) or choose the right one with --identity")
    if "connection refused" in text:
        return "nothing listens on that port: is sshd running on the door, is the port right?"
    if "timed out" in text or "no route to host" in text or "network is unreachable" in text:
        return "the door did not answer: is it powered, on this network, and the address right?"
    if "could not resolve" in text or "name or service not known" in text:
        return "the host name does not resolve: check the spelling or use the door's address"
    return "check the host, port, user and key (BatchMode is on: ssh never asks for anything)"


def _debug_requested(options: list[str]) -> bool:
    """``-v``/``-vv``/``-o LogLevel=DEBUG*`` among the user's options."""
    for i, option in enumerate(options):
        if re.fullmatch(r"-v+", option):
            return True
        value = option[2:] if option.startswith("-o") and len(option) > 2 else (
            options[i + 1] if option == "-o" and i + 1 < len(options) else "")
        if re.fullmatch(r"\s*loglevel\s*[= ]\s*debug\d?\s*", value, re.IGNORECASE):
            return True
    return False


class _SshSession(Closing):  # with: always closes the shared connection and its folder
    """The ssh/sftp commands of one deployment, sharing one multiplexed connection."""

    def __init__(self, parsed: SshTarget, target: str, ssh_options: list[str],
                 identity: Path | None, deadline: float, timeout_s: float) -> None:
        self.parsed = parsed
        self.target = target
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.steps: list[str] = []
        # ssh -v keeps the backgrounded master's stderr on our pipe, so a read would wait for it
        self.control_dir = None if _debug_requested(ssh_options) else self._make_control_dir()
        opts = ["-o", "BatchMode=yes", *ssh_options,
                "-o", f"ConnectTimeout={max(1, min(CONNECT_TIMEOUT_S, int(timeout_s)))}"]
        if identity is not None:
            opts += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
        if self.control_dir is not None:
            opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path}",
                     "-o", "ControlPersist=60"]
        self.options = opts

    @staticmethod
    def _make_control_dir() -> Path | None:
        for base in (None, "/tmp"):
            try:
                path = Path(tempfile.mkdtemp(prefix="twinlock-ssh-", dir=base))
            except OSError:
                continue
            if len(str(path)) <= _MAX_CONTROL_DIR_LEN:
                return path
            shutil.rmtree(path, ignore_errors=True)
        logger.debug("no short temporary folder for an SSH control socket; not multiplexing")
        return None

    @property
    def control_path(self) -> str:
        return f"{self.control_dir}/%C"

    def close(self) -> None:
        if self.control_dir is None:
            return
        if any(self.control_dir.iterdir()):
            argv = ["ssh", *self._port_args("-p"), "-o", f"ControlPath={self.control_path}",
                    "-O", "exit", self.parsed.destination]
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=_CLEANUP_TIMEOUT_S, check=False)
        shutil.rmtree(self.control_dir, ignore_errors=True)
        self.control_dir = None

    # commands

    def _port_args(self, flag: str) -> list[str]:
        return [flag, str(self.parsed.port)] if self.parsed.port else []

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", *self.options, *self._port_args("-p"), self.parsed.destination, command]

    def _run(self, step: str, argv: list[str], stdin_text: str | None = None,
             timeout: float | None = None, shown: str | None = None,
             record: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one command in its own process group; a timeout kills the whole group."""
        remaining = self.deadline - time.monotonic() if timeout is None else timeout
        if record:
            self.steps.append(shown or shlex.join(argv))
        if remaining <= 0:
            raise DeployError(f"deploy to {self.target} failed at step {step!r}: timed out "
                              f"(the whole deployment may take {self.timeout_s:g} s)", step=step)
        logger.debug("%s: %s", step, shown or shlex.join(argv))
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                start_new_session=True)
        except OSError as exc:
            raise DeployError(f"deploy to {self.target} failed at step {step!r}: could not run "
                              f"{argv[0]}: {exc}", step=step) from exc
        try:
            out, err = proc.communicate(stdin_text, timeout=remaining)
        except BaseException as exc:  # a timeout, or Ctrl-C: our own session never sees SIGINT
            kill_group(proc, reap=True)
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            raise DeployError(
                f"deploy to {self.target} failed at step {step!r}: timed out after "
                f"{self.timeout_s:g} s for the whole deployment", step=step) from exc
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def _fail(self, step: str, what: str, proc: subprocess.CompletedProcess[str],
              hint: str = "") -> DeployError:
        tail = output_tail(proc.stderr, _STDERR_TAIL_CHARS, _STDERR_TAIL_LINES)
        message = (f"deploy to {self.target} failed at step {step!r}: {what} "
                   f"(exit {proc.returncode})")
        if hint:
            message += f"; {hint}"
        if tail:
            message += f"\n{tail}"
        return DeployError(message, step=step, stderr=tail)

    def probe_destination(self, bundle_name: str) -> str:
        """Connect, and find where the bundle goes: the path itself or a file in that folder."""
        raw = self.parsed.path
        base = raw.rstrip("/") or "/"
        parent = posixpath.dirname(base) or "/"
        q_base, q_parent = shlex.quote(base), shlex.quote(parent)
        script = (f"if test -d {q_base}; then k=dir; w={q_base}; "
                  f"elif test -d {q_parent}; then k=file; w={q_parent}; "
                  "else k=missing; w=/; fi; "
                  'if test -w "$w"; then echo "twinlock-probe $k rw"; '
                  'else echo "twinlock-probe $k ro"; fi')
        proc = self._run("connect", self.ssh_argv(script))
        if proc.returncode == 255:
            raise self._fail("connect", f"could not log in to {self.parsed.destination}", proc,
                             _connect_hint(proc.stderr))
        found = re.findall(r"^twinlock-probe (dir|file|missing) (rw|ro)$", proc.stdout,
                           re.MULTILINE)
        if proc.returncode != 0 or not found:
            raise self._fail("connect", "the door's shell did not answer the folder check", proc)
        kind, access = found[-1]
        wants_folder = raw.endswith("/")
        if kind == "missing" or (wants_folder and kind != "dir"):
            folder = base if wants_folder else parent
            raise DeployError(
                f"deploy to {self.target} failed at step 'upload': remote folder {folder} does not "
                f"exist on {self.parsed.host} (deploy/install.sh creates "
                f"{DEFAULT_REMOTE_DIR.rstrip('/')}; or name another folder)", step="upload")
        folder = base if kind == "dir" else parent
        if access != "rw":
            raise DeployError(
                f"deploy to {self.target} failed at step 'upload': remote folder {folder} is not "
                f"writable by {self.parsed.user or 'the login user'}", step="upload")
        if kind == "dir":
            return f"{base.rstrip('/')}/{bundle_name}"
        return base

    def upload(self, bundle: Path, part: str) -> None:
        """``put -f``: the door fsyncs ``part`` before we rename it."""
        batch = f"put -f {_sftp_quote(str(bundle.resolve()))} {_sftp_quote(part)}\n"
        argv = ["sftp", "-q", "-b", "-", *self.options, *self._port_args("-P"),
                self.parsed.sftp_destination]
        proc = self._run("upload", argv, stdin_text=batch,
                         shown=f"{shlex.join(argv)} <<< {shlex.quote(batch.strip())}")
        if proc.returncode != 0:
            self._remove_part(part)
            raise self._fail("upload", f"sftp could not write {part}", proc)

    def rename(self, part: str, dest: str) -> None:
        # 0640: the daemon's user reads it through the drop folder's group (the bundle is
        # written 0600 on the host because it holds anchors); then the atomic rename
        proc = self._run("rename", self.ssh_argv(
            f"chmod 0640 {shlex.quote(part)} && mv -f {shlex.quote(part)} {shlex.quote(dest)}"))
        if proc.returncode != 0:
            self._remove_part(part)
            raise self._fail("rename", f"could not rename {part} to {dest}", proc)

    def reload(self, command: str, dest: str) -> None:
        proc = self._run("reload", self.ssh_argv(command))
        if proc.returncode != 0:
            hint = f"the bundle is in place at {dest}, but the door still runs the old one"
            if "sudo" in command and "password" in proc.stderr.lower():
                hint += ("; let the deploy user run the reload without a password (sudoers "
                         "NOPASSWD for this one command) or deploy with no reload")
            raise self._fail("reload", f"the reload command {command!r} failed", proc, hint)

    def _remove_part(self, part: str) -> None:
        """Best effort: a stale .part wastes the door's card space, but never hides the error."""
        with contextlib.suppress(DeployError):
            remaining = self.deadline - time.monotonic()
            self._run("cleanup", self.ssh_argv(f"rm -f {shlex.quote(part)}"),
                      timeout=max(0.1, min(_CLEANUP_TIMEOUT_S, remaining + _CLEANUP_TIMEOUT_S)),
                      record=False)
