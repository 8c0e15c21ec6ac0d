"""S3 credentials as clusters provide them, each source against a real server on loopback.

ember-pull streams one model object while the AWS_* environment points at one source:
  - web identity (EKS IRSA): moto's server is STS and S3 at once, and checks the signatures
    of S3 requests against the keys its STS issued (auth enforced after the set-up);
  - container credentials (EKS Pod Identity) and the instance metadata service (IMDSv2):
    small HTTP servers here that hand out the keys of rclone's S3 server, the way the real
    endpoints answer, refusing a wrong or missing authorization token;
  - a shared credentials file with a profile, the environment, and anonymous reads
    (--no_sign_request) of a bucket rclone serves without authentication;
  - TLS with a private CA this test creates (AWS_CA_BUNDLE), rclone serving HTTPS.
The instance metadata service is never the real one: every run sets its endpoint or
disables it. No secret may appear in any output.
"""

from __future__ import annotations

import datetime
import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
from make_test_model import write_single_object  # noqa: E402
from objstore import LocalS3, free_port  # noqa: E402

PULL = os.environ.get("EMBER_PULL", str(REPO / "build" / "loader" / "ember-pull"))
BUCKET, KEY = "models", "m/model.safetensors"
TIMEOUT = 120


def pull(env: dict[str, str], *flags: str, source: str = f"s3://{BUCKET}/{KEY}",
         secrets: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """ember-pull with only `env` for AWS (and HOME pointing nowhere); no secret in its output."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base.update(HOME="/nonexistent", AWS_REGION="us-east-1")
    run = subprocess.run([PULL, source, "--target=none", "--json", *flags],
                         env={**base, **env}, capture_output=True, text=True, timeout=TIMEOUT)
    for secret in secrets:
        assert secret not in run.stdout + run.stderr, "a secret reached the output"
    return run


def loaded(run: subprocess.CompletedProcess) -> dict:
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s3root")
    path = root / BUCKET / KEY
    path.parent.mkdir(parents=True)
    write_single_object(path, 1)
    return root


@pytest.fixture(scope="module")
def s3(model_file):
    with LocalS3(model_file, etag_hash=None) as server:
        yield server


def no_imds() -> dict[str, str]:
    return {"AWS_EC2_METADATA_DISABLED": "true"}


# --- Local credential endpoints ---------------------------------------------------------------

class CredentialServer:
    """A loopback HTTP server answering like the container endpoint or IMDSv2, counting hits."""

    def __init__(self, s3: LocalS3, kind: str, token: str = "", lifetime_s: int = 3600):
        self.s3, self.kind, self.token, self.lifetime_s = s3, kind, token, lifetime_s
        self.credential_fetches = 0
        self.unauthorized = 0
        self.port = free_port()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: str, content_type: str = "application/json"):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                if outer.kind == "imds" and self.path == "/latest/api/token" and \
                        self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self.reply(200, outer.token, "text/plain")
                self.reply(400, "")

            def do_GET(self):
                if outer.kind == "container":
                    if self.headers.get("Authorization") != outer.token:
                        outer.unauthorized += 1
                        return self.reply(401, '{"message": "unauthorized"}')
                    if self.path == "/v1/credentials":
                        return self.reply(200, outer.credentials())
                elif outer.kind == "imds":
                    if self.headers.get("X-aws-ec2-metadata-token") != outer.token:
                        outer.unauthorized += 1  # IMDSv1: refused, as with HttpTokens=required
                        return self.reply(401, "", "text/plain")
                    base = "/latest/meta-data/iam/security-credentials/"
                    if self.path == base:
                        return self.reply(200, "ember-node-role", "text/plain")
                    if self.path == base + "ember-node-role":
                        return self.reply(200, outer.credentials())
                self.reply(404, "{}")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def credentials(self) -> str:
        self.credential_fetches += 1
        expires = datetime.datetime.now(datetime.timezone.utc) + \
            datetime.timedelta(seconds=self.lifetime_s)
        body = {"AccessKeyId": self.s3.access_key, "SecretAccessKey": self.s3.secret_key,
                "Token": "session-token-" + self.token, "Expiration": expires.strftime(
                    "%Y-%m-%dT%H:%M:%SZ")}
        if self.kind == "imds":
            body = {"Code": "Success", "Type": "AWS-HMAC", **body}
        return json.dumps(body)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# --- The sources ------------------------------------------------------------------------------

def test_environment_keys(s3):
    result = loaded(pull({**s3.env(), **no_imds()}, secrets=(s3.secret_key,)))
    assert result["bytes"] > 0


def test_container_credentials_with_a_token_file_and_refresh(s3, tmp_path):
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text("pod-identity-token-1\n")
    # Credentials that expire within the refresh margin are fetched again before requests.
    with CredentialServer(s3, "container", token="pod-identity-token-1", lifetime_s=120) as server:
        env = {"AWS_ENDPOINT_URL": s3.endpoint, **no_imds(),
               "AWS_CONTAINER_CREDENTIALS_FULL_URI": server.url + "/v1/credentials",
               "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file)}
        run = pull(env, secrets=(s3.secret_key, "pod-identity-token-1"))
        loaded(run)
        assert "container credentials" in run.stderr
        assert server.credential_fetches >= 2, "credentials near expiry were not refreshed"
        assert server.unauthorized == 0
        # A wrong token: refused by the endpoint, and the error names the source, not the token.
        token_file.write_text("stale-token\n")
        run = pull(env, secrets=(s3.secret_key, "stale-token"))
        assert run.returncode == 1
        assert "container credentials" in run.stderr and "HTTP 401" in run.stderr, run.stderr
        assert "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" in run.stderr


def test_container_credentials_refuse_plain_http_off_the_node(s3):
    run = pull({"AWS_ENDPOINT_URL": s3.endpoint, **no_imds(),
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://example.com/creds"})
    assert run.returncode == 1
    assert "plain http only to the node" in run.stderr, run.stderr


def test_instance_metadata_imdsv2(s3):
    with CredentialServer(s3, "imds", token="imds-session-token") as server:
        env = {"AWS_ENDPOINT_URL": s3.endpoint,
               "AWS_EC2_METADATA_SERVICE_ENDPOINT": server.url}
        run = pull(env, secrets=(s3.secret_key, "imds-session-token"))
        loaded(run)
        assert "instance metadata" in run.stderr
        assert server.credential_fetches == 1 and server.unauthorized == 0


def test_shared_credentials_file_with_a_profile(s3, tmp_path):
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = WRONG\naws_secret_access_key = WRONG\n\n"
                           f"[ember]\naws_access_key_id = {s3.access_key}\n"
                           f"aws_secret_access_key = {s3.secret_key}\n")
    config = tmp_path / "config"
    config.write_text("[profile ember]\nregion = us-east-1\n[profile chained]\n"
                      "role_arn = arn:aws:iam::1:role/x\nsource_profile = ember\n")
    env = {"AWS_ENDPOINT_URL": s3.endpoint, **no_imds(), "AWS_PROFILE": "ember",
           "AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_CONFIG_FILE": str(config)}
    run = pull(env, secrets=(s3.secret_key,))
    loaded(run)
    assert "profile 'ember'" in run.stderr
    run = pull({**env, "AWS_PROFILE": "missing"})
    assert run.returncode == 1 and "AWS_PROFILE=missing: no such profile" in run.stderr, run.stderr
    run = pull({**env, "AWS_PROFILE": "chained"})
    assert run.returncode == 1 and "role_arn" in run.stderr, run.stderr


def test_no_source_names_every_source_tried(s3):
    run = pull({"AWS_ENDPOINT_URL": s3.endpoint, **no_imds()})
    assert run.returncode == 1
    for source in ("the environment", "web identity", "shared files", "container credentials",
                   "instance metadata", "--no_sign_request"):
        assert source in run.stderr, run.stderr


def test_a_public_bucket_with_no_sign_request(model_file, tmp_path):
    # rclone without --auth-key serves anonymously; signed requests it cannot check either.
    root = tmp_path / "public"
    (root / BUCKET / "m").mkdir(parents=True)
    os.link(model_file / BUCKET / KEY, root / BUCKET / KEY)
    port = free_port()
    rclone = subprocess.Popen(["rclone", "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
                               "--etag-hash", "", "--vfs-cache-mode", "off"],
                              env={**os.environ, "RCLONE_CONFIG": "/dev/null"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", **no_imds()}
        loaded(pull(env, "--no_sign_request"))
        assert pull(env).returncode == 1  # without the flag: no credentials, no request
    finally:
        rclone.terminate()
        rclone.wait(timeout=10)


def wait_listening(port: int) -> None:
    import socket
    import time
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# --- Web identity through moto's STS ----------------------------------------------------------

def fix_motos_canonical_query() -> None:
    """moto checks a signature over the query as it decoded it ("delimiter=/"), where SigV4
    (and AWS, rclone, MinIO) sign it percent-encoded ("delimiter=%2F"): moto issue #5948. Its
    server runs in this process, so its check is given the query encoded again."""
    import urllib.parse
    from moto.iam.access_control import IAMRequestBase

    original = IAMRequestBase._create_aws_request
    if getattr(original, "ember_fixed", False):
        return

    def encode(part: str) -> str:
        return urllib.parse.quote(urllib.parse.unquote(part), safe="-_.~")

    def create_aws_request(self):
        path, _, query = self._path.partition("?")
        if query:
            self._path = path + "?" + "&".join(
                "=".join(encode(p) for p in pair.split("=", 1)) for pair in query.split("&"))
        return original(self)

    create_aws_request.ember_fixed = True
    IAMRequestBase._create_aws_request = create_aws_request


@pytest.fixture(scope="module")
def moto(model_file):
    """moto's server as STS and S3: the model uploaded, a role that may read it; then only the
    one unsigned AssumeRoleWithWebIdentity passes without a valid signature."""
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    fix_motos_canonical_query()
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"

    def reset_auth(count: int) -> None:
        urllib.request.urlopen(urllib.request.Request(
            endpoint + "/moto-api/reset-auth", data=str(count).encode(), method="POST",
            headers={"Content-Type": "text/plain"}), timeout=10).read()

    try:
        reset_auth(1000)
        keys = dict(endpoint_url=endpoint, region_name="us-east-1",
                    aws_access_key_id="AKIAEMBERSETUP000000", aws_secret_access_key="s" * 40)
        s3 = boto3.client("s3", **keys)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=KEY, Body=(model_file / BUCKET / KEY).read_bytes())
        iam = boto3.client("iam", **keys)
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
            "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/oidc.local"}}]}
        role = iam.create_role(RoleName="ember-reader",
                               AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        iam.put_role_policy(RoleName="ember-reader", PolicyName="read", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                 "Resource": "*"}]}))
        yield endpoint, role, reset_auth
    finally:
        server.stop()


def test_web_identity_through_sts(moto, tmp_path):
    endpoint, role, reset_auth = moto
    token_file = tmp_path / "token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZW1iZXIifQ.sig")
    env = {"AWS_ENDPOINT_URL": endpoint, **no_imds(), "AWS_ROLE_ARN": role,
           "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file), "AWS_ROLE_SESSION_NAME": "ember-test"}
    reset_auth(1)  # the AssumeRoleWithWebIdentity call; every S3 request is then checked
    run = pull(env, secrets=(token_file.read_text(),))
    assert loaded(run)["bytes"] > 0
    assert "web identity" in run.stderr and role in run.stderr
    # Keys STS did not issue are refused by the same server (the check above is real).
    reset_auth(0)
    run = pull({"AWS_ENDPOINT_URL": endpoint, **no_imds(),
                "AWS_ACCESS_KEY_ID": "ASIANOTISSUEDBYSTS00", "AWS_SECRET_ACCESS_KEY": "x" * 40})
    assert run.returncode == 1 and "403" in run.stderr, run.stderr[-2000:]


def test_web_identity_errors_name_the_source(tmp_path):
    run = pull({**no_imds(), "AWS_ROLE_ARN": "arn:aws:iam::1:role/r",
                "AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "missing")})
    assert run.returncode == 1
    assert "web identity" in run.stderr and "AWS_WEB_IDENTITY_TOKEN_FILE" in run.stderr
    assert "cannot be read" in run.stderr, run.stderr
    run = pull({**no_imds(), "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"})
    assert run.returncode == 1 and "AWS_WEB_IDENTITY_TOKEN_FILE is unset" in run.stderr


# --- A private CA -----------------------------------------------------------------------------

def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 it signed: (ca.pem, server.pem, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ember test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_with_a_private_ca_bundle(model_file, tmp_path):
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    with LocalS3(model_file, etag_hash=None, extra_args=("--cert", str(cert), "--key", str(key))) \
            as server:
        env = {**server.env(), **no_imds(), "AWS_ENDPOINT_URL": f"https://127.0.0.1:{server.port}"}
        loaded(pull({**env, "AWS_CA_BUNDLE": str(ca)}, secrets=(server.secret_key,)))
        run = pull(env, secrets=(server.secret_key,))  # the system store does not know the CA
        assert run.returncode == 1 and "certificate" in run.stderr.lower(), run.stderr[-2000:]
        run = pull({**env, "AWS_CA_BUNDLE": str(tmp_path / "nope.pem")})
        assert run.returncode == 1 and "AWS_CA_BUNDLE" in run.stderr and "nope.pem" in run.stderr
