"""The images' runtime contract without a container runtime: a repository that root published (under a strict
umask, as a build job may) is served by uid 10001, the images' user. And a version published private to its
publisher (as nlpsuite did before) is refused with a message that says how to fix it."""
from __future__ import annotations

import os
import shutil
import site
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest

from nlpsuite.shared.model_repo import ModelRepository
from nlpsuite.v1 import sentiment_pb2, sentiment_pb2_grpc
from nlpsuite.shared.local_run import NotServing, ServeProcess

IMAGE_UID = 10001
SERVICE = "nlpsuite.v1.SentimentService"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")


# Runs `nlpsuite.cli` with this environment's packages on an interpreter the image user can execute: the
# venv's own may live under a private home (pyenv in /root), the system's same-version Python does not.
_BOOT = ("import runpy, site, sys\n"
         "for d in sys.argv[1].split(':'): site.addsitedir(d)\n"
         "sys.argv = ['nlpsuite'] + sys.argv[2:]\n"
         "runpy.run_module('nlpsuite.cli', run_name='__main__')")


def interpreter_for(uid: int) -> str:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, user=uid, group=uid, extra_groups=[], timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    pytest.skip(f"no Python {version} that uid {uid} may run")


def as_image_user(server: ServeProcess) -> ServeProcess:
    paths = ":".join(site.getsitepackages())
    server.args = [interpreter_for(IMAGE_UID), "-c", _BOOT, paths, *server.args[3:]]  # after `python -m nlpsuite.cli`
    return server


@pytest.fixture()
def shared_dir():
    """A folder every user may enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="nlpsuite-nonroot-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def publish_as_strict_root(version_dir: Path, base: Path) -> Path:
    """Publish a copy of a version under umask 077, its staged files private, as a build job might write them."""
    previous = os.umask(0o077)
    try:
        staged = base / "staged"
        shutil.copytree(version_dir, staged)
        for parent, dirs, files in os.walk(staged):
            os.chmod(parent, 0o700)
            for name in files:
                os.chmod(os.path.join(parent, name), 0o600)
        ModelRepository(base / "models").publish(staged, "sentiment")
        shutil.rmtree(staged)
    finally:
        os.umask(previous)
    return base / "models"


def section(repo: Path) -> dict:
    return {"model": {"name": "sentiment", "repository": str(repo), "provider": "cpu", "reload_interval_s": 0}}


def test_uid_10001_serves_a_repository_root_published_under_umask_077(built_classifier, shared_dir):
    repo = publish_as_strict_root(built_classifier.path, shared_dir)
    version = repo / "sentiment" / "1"
    for path in (repo, repo / "sentiment", version):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in version.rglob("*") if p.is_file())
    with as_image_user(ServeProcess("sentiment", section(repo), shared_dir, service_name=SERVICE,
                                    user=IMAGE_UID)) as server:
        assert Path(f"/proc/{server.proc.pid}/status").read_text().count(f"\t{IMAGE_UID}\t") >= 2  # Uid, Gid
        with grpc.insecure_channel(server.target) as channel:
            reply = sentiment_pb2_grpc.SentimentServiceStub(channel).Analyze(
                sentiment_pb2.AnalyzeRequest(texts=["Norvale Mining shares jump after record output"]), timeout=30)
        assert reply.model.version == "1" and reply.results[0].label in built_classifier.manifest.labels


def test_a_private_version_is_refused_with_the_fix(built_classifier, shared_dir):
    repo = publish_as_strict_root(built_classifier.path, shared_dir)
    (repo / "sentiment" / "1").chmod(0o700)  # what publish wrote before
    server = as_image_user(ServeProcess("sentiment", section(repo), shared_dir, service_name=SERVICE, user=IMAGE_UID))
    with pytest.raises(NotServing, match="exited"):
        server.start(timeout_s=60)
    assert server.stop() != 0
    log = server.log_path.read_text()
    assert f"is not readable by uid {IMAGE_UID} (mode 0700, owner uid 0)" in log, log[-2000:]
    assert f"chmod -R a+rX {repo / 'sentiment'}" in log
