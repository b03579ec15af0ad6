"""TLS to a real PostgreSQL server with a certificate of a test CA: ``sslmode=verify-full``
checks the chain and the host, ``verify-ca`` the chain only, ``require`` encrypts without
checking (as libpq); a role the server authenticates by client certificate (``cert`` in
pg_hba.conf) connects with ``sslcert``/``sslkey`` (or libpq's default files) and only so.
Certificates from the ``openssl`` command (Debian's postgresql depends on it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.parse
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import ferroq
import pg_cluster

pytestmark = pytest.mark.slow  # a PostgreSQL server of its own


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_certs(d: Path) -> None:
    """Two CAs; a server certificate signed by the first, naming 127.0.0.1 only."""
    for ca in ("ca", "other_ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN=ferroq test {ca}",
            cwd=d,
        )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=d,
    )
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        cwd=d,
    )
    # A client certificate for the role CERT_USER (cert authentication maps the CN to it).
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
             "-subj", f"/CN={CERT_USER}", cwd=d)  # fmt: skip
    (d / "client.cnf").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.pem", "-days", "2", "-extfile", "client.cnf", cwd=d)  # fmt: skip
    # The same key under a passphrase: PKCS#8 (PBES2, as `openssl pkcs8 -topk8` writes it), and
    # OpenSSL's legacy PEM encryption (not supported: refused with the command that converts it).
    _openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", "client.key", "-out", "client.enc.key",
             "-passout", f"pass:{KEY_PASSPHRASE}", cwd=d)  # fmt: skip
    _openssl("rsa", "-traditional", "-aes256", "-in", "client.key", "-out", "client.legacy.key",
             "-passout", f"pass:{KEY_PASSPHRASE}", cwd=d)  # fmt: skip


CERT_USER = "certuser"
KEY_PASSPHRASE = "open sesame&co"


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[pg_cluster.Cluster, Path]]:
    if pg_cluster.find_bindir() is None or shutil.which("openssl") is None:
        if pg_cluster.in_ci():
            pytest.fail("PostgreSQL or openssl is missing (CI=true)")
        pytest.skip("*** PostgreSQL or openssl not found: the TLS tests SKIPPED ***")
    # Not under pytest's base directory: that is private to its owner, the server another user.
    d = Path(tempfile.mkdtemp(prefix="ferroq-tls-"))
    d.chmod(0o755)
    _make_certs(d)
    user = pg_cluster._server_user()
    if user:  # the server reads its key, which must be its own and private
        pw = pg_cluster.pwd.getpwnam(user)
        for name in ("server.key", "server.pem"):
            os.chown(d / name, pw.pw_uid, pw.pw_gid)
    (d / "server.key").chmod(0o600)
    settings = (
        "ssl=on",
        f"ssl_cert_file={d / 'server.pem'}",
        f"ssl_key_file={d / 'server.key'}",
        f"ssl_ca_file={d / 'ca.pem'}",  # the roots client certificates are checked against
    )
    try:
        with pg_cluster.Cluster(settings=settings) as cluster:
            # CERT_USER logs in by client certificate only (the first matching line wins).
            hba = Path(cluster.datadir) / "pg_hba.conf"
            hba.write_text(
                f"hostssl all {CERT_USER} 127.0.0.1/32 cert\nhost all {CERT_USER} all reject\n" + hba.read_text()
            )
            cluster.psql(f"CREATE ROLE {CERT_USER} LOGIN SUPERUSER; SELECT pg_reload_conf()")
            yield cluster, d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def url(cluster: pg_cluster.Cluster, mode: str, root: Path | None, host: str = "127.0.0.1") -> str:
    query = f"sslmode={mode}" + (f"&sslrootcert={root}" if root else "")
    return f"postgresql://postgres@{host}:{cluster.port}/postgres?{query}"


def encrypted_connections(cluster: pg_cluster.Cluster) -> int:
    return int(
        cluster.psql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            " WHERE s.ssl AND a.application_name = 'ferroq'"
        )
    )


def test_verify_full_with_the_right_root_connects_encrypted(tls_server: tuple[pg_cluster.Cluster, Path]) -> None:
    cluster, d = tls_server
    with ferroq.Queue(url(cluster, "verify-full", d / "ca.pem")) as q:
        assert "sslmode=verify-full" in q.path and f"sslrootcert={d / 'ca.pem'}" in q.path  # workers reopen it
        task = q.task(name="t")(lambda: None)
        task.enqueue()
        assert q.counts()["pending"] == 1
        assert encrypted_connections(cluster) >= 1


def test_verify_full_refuses_a_server_an_untrusted_root_signed(tls_server: tuple[pg_cluster.Cluster, Path]) -> None:
    cluster, d = tls_server
    with pytest.raises(ferroq.StorageError, match="UnknownIssuer"):
        ferroq.Queue(url(cluster, "verify-full", d / "other_ca.pem"))


def test_verify_full_checks_the_host_and_verify_ca_does_not(tls_server: tuple[pg_cluster.Cluster, Path]) -> None:
    cluster, d = tls_server
    # The certificate names 127.0.0.1, not localhost (which resolves to it).
    with pytest.raises(ferroq.StorageError, match="not valid for name"):
        ferroq.Queue(url(cluster, "verify-full", d / "ca.pem", host="localhost"))
    with ferroq.Queue(url(cluster, "verify-ca", d / "ca.pem", host="localhost")) as q:
        assert q.counts()["pending"] >= 0
    with pytest.raises(ferroq.StorageError, match="UnknownIssuer"):
        ferroq.Queue(url(cluster, "verify-ca", d / "other_ca.pem", host="localhost"))


def test_require_encrypts_without_checking_the_certificate(tls_server: tuple[pg_cluster.Cluster, Path]) -> None:
    cluster, d = tls_server
    with ferroq.Queue(url(cluster, "require", None)) as q:
        assert q.counts()["pending"] >= 0
        assert encrypted_connections(cluster) >= 1


def test_a_missing_or_empty_root_file_is_a_clear_error(
    tls_server: tuple[pg_cluster.Cluster, Path], tmp_path: Path
) -> None:
    cluster, _ = tls_server
    with pytest.raises(ferroq.InvalidArgument, match="sslrootcert"):
        ferroq.Queue(url(cluster, "verify-full", tmp_path / "missing.pem"))
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(ferroq.InvalidArgument, match="no certificate"):
        ferroq.Queue(url(cluster, "verify-full", tmp_path / "empty.pem"))


def cert_url(cluster: pg_cluster.Cluster, query: str) -> str:
    return f"postgresql://{CERT_USER}@127.0.0.1:{cluster.port}/postgres?sslmode=require{query}"


def test_a_client_certificate_logs_in_a_role_that_requires_one(
    tls_server: tuple[pg_cluster.Cluster, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, d = tls_server
    monkeypatch.setenv("HOME", str(tmp_path))  # no default client certificate
    files = f"&sslcert={d / 'client.pem'}&sslkey={d / 'client.key'}"
    with ferroq.Queue(cert_url(cluster, files)) as q:
        assert f"sslcert={d / 'client.pem'}" in q.path and f"sslkey={d / 'client.key'}" in q.path  # workers reopen it
        task_id = q.task(name="t")(lambda: None).enqueue().id
        assert q.get(task_id).status == "pending"
        dn = cluster.psql(
            "SELECT s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            f" WHERE a.usename = '{CERT_USER}' LIMIT 1"
        )
        assert f"CN={CERT_USER}" in dn
    # Without one the server refuses, with its reason.
    with pytest.raises(ferroq.StorageError, match="requires a valid client certificate"):
        ferroq.Queue(cert_url(cluster, ""))


def test_libpq_default_client_certificate_files_are_used(
    tls_server: tuple[pg_cluster.Cluster, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, d = tls_server
    home = tmp_path / ".postgresql"
    home.mkdir()
    shutil.copy(d / "client.pem", home / "postgresql.crt")
    shutil.copy(d / "client.key", home / "postgresql.key")
    monkeypatch.setenv("HOME", str(tmp_path))
    with ferroq.Queue(cert_url(cluster, "")) as q:
        assert q.counts()["pending"] >= 0


def test_unusable_client_certificate_files_are_a_clear_error(
    tls_server: tuple[pg_cluster.Cluster, Path], tmp_path: Path
) -> None:
    cluster, d = tls_server
    with pytest.raises(ferroq.InvalidArgument, match="sslcert"):
        ferroq.Queue(cert_url(cluster, f"&sslcert={tmp_path / 'missing.pem'}"))
    (tmp_path / "no.key").write_text("")
    with pytest.raises(ferroq.InvalidArgument, match="private key"):
        ferroq.Queue(cert_url(cluster, f"&sslcert={d / 'client.pem'}&sslkey={tmp_path / 'no.key'}"))
    with pytest.raises(ferroq.InvalidArgument, match="does not fit"):  # another key than the certificate's
        ferroq.Queue(cert_url(cluster, f"&sslcert={d / 'client.pem'}&sslkey={d / 'server.key'}"))


def test_an_encrypted_client_key_is_decrypted_with_sslpassword(
    tls_server: tuple[pg_cluster.Cluster, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, d = tls_server
    monkeypatch.setenv("HOME", str(tmp_path))
    files = f"&sslcert={d / 'client.pem'}&sslkey={d / 'client.enc.key'}"
    passphrase = urllib.parse.quote(KEY_PASSPHRASE, safe="")
    with ferroq.Queue(cert_url(cluster, f"{files}&sslpassword={passphrase}")) as q:
        assert "sesame" not in q.path  # a secret, as the password
        assert q.get(q.task(name="t")(lambda: None).enqueue().id).status == "pending"
    with pytest.raises(ferroq.InvalidArgument, match="encrypted: give its passphrase as sslpassword"):
        ferroq.Queue(cert_url(cluster, files))
    with pytest.raises(ferroq.InvalidArgument, match="wrong sslpassword") as wrong:
        ferroq.Queue(cert_url(cluster, f"{files}&sslpassword=not-it"))
    assert "not-it" not in str(wrong.value)
    legacy = f"&sslcert={d / 'client.pem'}&sslkey={d / 'client.legacy.key'}&sslpassword={passphrase}"
    with pytest.raises(ferroq.InvalidArgument, match="legacy format.*openssl pkcs8 -topk8"):
        ferroq.Queue(cert_url(cluster, legacy))
