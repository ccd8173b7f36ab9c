"""The user's own commands: ``ray up`` the local-provider cluster in ``infra/`` over SSH
on 127.0.0.1, ``ray submit`` it ``flows/segment_scene.py`` on a sample scene (the
script joins the cluster because the head's ``RAY_ADDRESS`` says so), check the
GeoTIFF, ``ray down``.

sshd (``openssh-server``; ``.ci/run`` installs it) runs for this test only, with a
key made here, inside its own PID and mount namespaces (``unshare``): the
``ray stop`` that ``ray up`` / ``ray down`` run on the head then only sees this
cluster's processes, and the home directory the setup commands edit is a
temporary folder bind-mounted over the real one.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from bench.loopback import free_port
from pipeline.job.config import SegmentConfig
from pipeline.job.steps import segment
from tests._varying_models import label_spread
from tests.conftest import noise_scene_array, skip_unless_ci, write_raster

ROOT = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
RAY = str(Path(sys.executable).with_name("ray"))
# Blocks of 128² in 64² tiles; one thread, as the in-process reference (torch rounds with the thread count).
ENGINE = ["--tile", "64", "--block", "128", "--chunk", "128", "--threads", "1"]


def _missing_tools() -> str | None:
    if sys.platform != "linux":
        return "needs Linux namespaces"
    for tool in (SSHD, "ssh", "ssh-keygen", "rsync", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install -y openssh-server rsync; .ci/run does)"
    if os.geteuid() != 0:
        return "needs root to run sshd on port 22 in its own namespaces"
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 22)) == 0:
            return "port 22 on 127.0.0.1 is already taken by another sshd"
    namespaces = ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "true"]
    probe = subprocess.run(namespaces, capture_output=True)
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture
def sshd(tmp_path):
    """sshd on 127.0.0.1:22 accepting a fresh key for the current user; yields the key."""
    reason = _missing_tools()
    if reason:
        skip_unless_ci(reason)  # CI installs sshd and rsync and runs as root: there it fails
    keys = tmp_path / "ssh"
    keys.mkdir()
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / "id"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / "host"], check=True)
    (keys / "authorized_keys").write_text((keys / "id.pub").read_text())
    config = keys / "sshd_config"
    config.write_text(
        f"Port 22\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    # The sessions' home: copies of the shell start-up files (the setup commands edit
    # them), links to everything else in the real home (which may hold the Python).
    user_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    real_home = tmp_path / "real_home"
    real_home.mkdir()
    for entry in user_home.iterdir():
        if entry.name in (".bashrc", ".profile", ".bash_profile", ".bash_login"):
            shutil.copy(entry, home / entry.name)
        elif not entry.name.startswith("ray_bootstrap"):
            (home / entry.name).symlink_to(real_home / entry.name)
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "bash", "-c",
         f"mount --bind {user_home} {real_home} && mount --bind {home} {user_home} "
         f"&& exec {SSHD} -D -e -f {config}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    ssh = ["ssh", "-i", str(keys / "id"), "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
           f"{getpass.getuser()}@127.0.0.1"]  # fmt: skip
    deadline = time.monotonic() + 30
    while subprocess.run([*ssh, "true"], capture_output=True).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"sshd did not come up: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.3)
    try:
        yield keys / "id"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the namespace's processes go with its first one
        proc.wait()


def _cluster_config(tmp_path: Path, key: Path, port: int, ray_tmp: str) -> Path:
    config = yaml.safe_load((ROOT / "infra" / "ray_local_cluster.yaml").read_text())
    config["cluster_name"] = f"gigaseg-test-{port}"
    config["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(key)}
    # This checkout instead of /opt/gigaseg, with the venv running this test (a git worktree has
    # none of its own); the checkout's code ahead of the venv's editable install.
    config["setup_commands"] = [
        c.replace("/opt/gigaseg/.venv", sys.prefix).replace("/opt/gigaseg", str(ROOT))
        for c in config["setup_commands"]
    ] + [f"echo 'export PYTHONPATH={ROOT}' >> ~/.bashrc"]
    # A port and temp folder of its own, so nothing else on this machine finds or meets it.
    # Token auth off for this loopback-only cluster: with a private temp folder the
    # submitted driver does not find the token Ray generated.
    config["head_setup_commands"] = [c.replace(":6379", f":{port}") for c in config["head_setup_commands"]]
    config["head_start_ray_commands"] = [
        c.replace("--port=6379", f"--port={port} --temp-dir={ray_tmp} --num-cpus=2").replace(
            "ray start", "RAY_AUTH_MODE=disabled ray start"
        )
        for c in config["head_start_ray_commands"]
    ]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_ray_up_submit_segment_scene_down_gives_the_in_process_result(sshd, tiny_checkpoint, tmp_path):
    """The scene segmented on the cluster equals the same job run in this process: labels and
    probabilities, with a model whose labels vary (so a block written in the wrong place shows)."""
    data = noise_scene_array((256, 320), seed=1)
    data[:, :40, :30] = 0  # a nodata corner
    scene = write_raster(tmp_path / "scene.tif", data, nodata=0)
    out = tmp_path / "classes.tif"
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="gsr", dir="/tmp")  # short: Ray's socket paths have a length limit
    cluster = _cluster_config(tmp_path, sshd, port, ray_tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    run = lambda *args, timeout=240: subprocess.run(  # noqa: E731
        [RAY, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    try:
        up = run("up", "-y", "--no-config-cache", str(cluster))
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        submitted = run(
            "submit", str(cluster), str(ROOT / "flows" / "segment_scene.py"), "--",
            str(scene), "-m", str(tiny_checkpoint), "-o", str(out),
            "--probabilities", str(out.with_suffix(".p.tif")), *ENGINE, "--workers", "2",
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert f"gigaseg: wrote {out}" in submitted.stdout + submitted.stderr
        # Told by the head's RAY_ADDRESS, the script ran as a driver of this cluster, not a private Ray.
        assert list(Path(ray_tmp).glob("session_*/logs/python-core-driver-*")), "the script did not join"
    finally:
        down = run("down", "-y", str(cluster), timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert down.returncode == 0, down.stderr[-2000:]

    reference = tmp_path / "in_process.tif"
    in_process = SegmentConfig(
        input=scene, model=str(tiny_checkpoint), output=reference,
        probabilities=reference.with_suffix(".p.tif"), tile=64, block=128, chunk=128, threads=1, workers=0,
        quiet=True,
    )  # fmt: skip
    segment(in_process)
    with rasterio.open(reference) as ref, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape) == (ref.crs, ref.transform, ref.shape)
        labels, expected = dst.read(1), ref.read(1)
    label_spread(expected).check(min_classes=4, min_share=0.15)
    np.testing.assert_array_equal(labels, expected)
    with (
        rasterio.open(reference.with_suffix(".p.tif")) as ref,
        rasterio.open(out.with_suffix(".p.tif")) as dst,
    ):
        np.testing.assert_allclose(dst.read(), ref.read(), atol=1e-6)
