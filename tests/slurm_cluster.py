"""A real one-node SLURM cluster for the test suite, started and stopped by the suite itself.

    with SlurmCluster.start(folder) as cluster:    # installs slurm-wlm + munge when missing (apt, root)
        cluster.env                                # SLURM_CONF etc. for sbatch / squeue / snakemake
    python tests/slurm_cluster.py FOLDER           # start one by hand; Ctrl-C or kill stops it

Everything lives in `folder`: slurm.conf, the munge key and socket, state, spool, logs and PID
files, on ports nobody else uses, so it never talks to a system SLURM or munge. One thing leaves
it: a marked copy of slurm.conf at /etc/slurm/slurm.conf, because the nested srun inside each
Snakemake job runs without SLURM_CONF; a foreign file there is never replaced (the tests skip), and
`stop` cancels any job still queued, removes the copy and ends exactly the three daemons it
started. No accounting storage (`sacct` has nothing): status comes from squeue
(`--slurm-status-command squeue`). `unavailable()` says why a machine cannot run one (not root,
no apt, a system SLURM), so tests skip with that reason rather than pass.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = ("slurm-wlm", "munge")
# The jobstep plugin strips SLURM_* (SLURM_CONF too) from the nested srun inside each job
# (snakemake-executor-plugin-slurm issue #164), so the config must sit where srun looks by default.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARK = "# written by gear's tests/slurm_cluster.py; removed when that cluster stops"


def _foreign_conf() -> str | None:
    """Why /etc/slurm/slurm.conf may not be (over)written now: a system SLURM's file, or the marked
    copy of another test cluster that still runs (two `make test` at once on one machine)."""
    if not SYSTEM_CONF.is_file():
        return None
    text = SYSTEM_CONF.read_text()
    if not text.startswith(MARK):
        return f"{SYSTEM_CONF} belongs to a system SLURM; the test cluster will not replace it"
    pidfile = re.search(r"^SlurmctldPidFile=(\S+)$", text, re.M)
    try:
        pid = int(Path(pidfile.group(1)).read_text().split()[0]) if pidfile else 0
        running = pid > 0 and Path(f"/proc/{pid}/comm").read_text().strip() == "slurmctld"
    except (OSError, ValueError, IndexError):
        running = False  # a copy left by a cluster that was killed: replace it
    if running:
        return f"another test cluster runs on this machine (slurmctld {pid}, {pidfile.group(1)}); one at a time"
    return None


def _installed() -> bool:
    return all(shutil.which(d) for d in (*DAEMONS, "sbatch", "squeue", "scontrol", "mungekey"))


def unavailable() -> str | None:
    """Why no test cluster can run here (after installing the packages if that is possible), or None."""
    if _installed():
        return "slurmd must run as root to launch jobs; not root" if os.geteuid() != 0 else _foreign_conf()
    if os.geteuid() != 0:
        return "slurm-wlm/munge are not installed and installing them needs root"
    if not shutil.which("apt-get"):
        return "slurm-wlm/munge are not installed and there is no apt-get"
    apt = dict(env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), capture_output=True, text=True, timeout=600)
    r = subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], **apt)
    if r.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], **apt)
        r = subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], **apt)
    if r.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
    return _foreign_conf() if _installed() else "slurm-wlm installed but its commands are not on PATH"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


@dataclass
class SlurmCluster:
    folder: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    gpus: int = 2  # fake GPUs (null devices): GPU requests schedule on a CPU node
    cpus: int = field(default_factory=os.cpu_count)  # declared; slurmd takes them as given
    mem_mb: int = field(default_factory=_mem_mb)
    pids: dict = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def env(self) -> dict:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def write_config(self) -> None:
        f = self.folder
        for d in ("state", "spool", "munge"):
            (f / d).mkdir(parents=True, exist_ok=True)
        os.chmod(f / "munge", 0o700)
        ports = (_free_port(), _free_port())
        self.conf.write_text("\n".join([
            "ClusterName=geartest", f"SlurmctldHost={self.node}", "SlurmUser=root", "SlurmdUser=root",
            # cred_expire: also how long a requeued job is held before it may start again (default
            # 120 s); 10 s still leaves a step launch on a loaded 2-core host ample time
            "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={f / 'munge' / 'munge.socket'},cred_expire=10",
            f"SlurmctldPort={ports[0]}", f"SlurmdPort={ports[1]}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU", "SchedulerType=sched/backfill", "MpiDefault=none",
            # a job whose hold ends starts at the next pass of the scheduler: every 2 s, not 30-60 s
            "SchedulerParameters=sched_interval=2,bf_interval=2",
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none", "ReturnToService=2", "KillWait=30", "MinJobAge=300",
            f"StateSaveLocation={f / 'state'}", f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}", f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'slurmctld.log'}", f"SlurmdLogFile={f / 'slurmd.log'}",
            "GresTypes=gpu",
            "SlurmdParameters=config_overrides",  # the node as declared here, not as probed
            f"NodeName={self.node} CPUs={self.cpus} RealMemory={self.mem_mb} Gres=gpu:{self.gpus} State=UNKNOWN",
            f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
            ""]))
        (f / "dev").mkdir(exist_ok=True)
        for i in range(self.gpus):  # fake GPUs: character devices like /dev/null (slurmd wants devices)
            dev = f / "dev" / f"gpu{i}"
            if not dev.exists():
                os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        (f / "gres.conf").write_text(f"NodeName={self.node} Name=gpu File={f / 'dev'}/gpu[0-{self.gpus - 1}]\n")
        why = _foreign_conf()
        if why:
            raise RuntimeError(why)
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        tmp = SYSTEM_CONF.with_suffix(".tmp")
        tmp.write_text(f"{MARK}\n{self.conf.read_text()}")
        tmp.replace(SYSTEM_CONF)

    def _daemon(self, name: str, args: list[str], pidfile: Path) -> None:
        r = subprocess.run([name, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{name} did not start: {(r.stderr.strip() or r.stdout.strip())[-500:]}")
        for _ in range(100):
            if pidfile.is_file() and pidfile.read_text().strip():
                self.pids[name] = int(pidfile.read_text().split()[0])
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} started but wrote no PID file {pidfile}")

    @classmethod
    def start(cls, folder: Path, timeout: float = 60.0, **node) -> "SlurmCluster":
        c = cls(Path(folder).resolve(), **node)
        c.write_config()
        m = c.folder / "munge"
        subprocess.run(["mungekey", "-c", "-f", "-k", str(m / "munge.key")], check=True, capture_output=True)
        try:
            c._daemon("munged", ["--force", f"--socket={m / 'munge.socket'}", f"--key-file={m / 'munge.key'}",
                                 f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                                 f"--seed-file={m / 'munged.seed'}"], m / "munged.pid")
            c._daemon("slurmctld", ["-i"], c.folder / "slurmctld.pid")   # -i: ignore any old state
            c._daemon("slurmd", [], c.folder / "slurmd.pid")
            c.wait_idle(timeout)
        except BaseException:
            c.stop()
            raise
        return c

    def wait_idle(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip() == "idle":
                return
            time.sleep(0.5)
        logs = "".join((self.folder / n).read_text()[-800:] for n in ("slurmctld.log", "slurmd.log")
                       if (self.folder / n).is_file())
        raise RuntimeError(f"node {self.node} not idle after {timeout:.0f} s; logs:\n{logs}")

    def cancel_jobs(self, timeout: float = 45.0) -> None:
        """scancel whatever is still queued or running (an interrupted test run) and wait until it is
        gone: a job's processes live under slurmstepd, which would outlive slurmd."""
        def queued() -> list[str]:
            r = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True, timeout=30)
            return r.stdout.split() if r.returncode == 0 else []

        jobs = queued()
        if jobs:
            subprocess.run(["scancel", *jobs], env=self.env, capture_output=True, timeout=30)
        end = time.monotonic() + timeout  # KillWait (30 s) is the longest a job may take to die
        while jobs and time.monotonic() < end:
            time.sleep(0.5)
            jobs = queued()

    def stop(self) -> None:
        """Cancel its jobs, end the daemons this cluster started (slurmd first) and remove its
        /etc/slurm copy, nothing else."""
        if "slurmctld" in self.pids:
            try:
                self.cancel_jobs()
            except (OSError, subprocess.SubprocessError):
                pass
        if SYSTEM_CONF.is_file() and self.conf.is_file() and SYSTEM_CONF.read_text() == f"{MARK}\n{self.conf.read_text()}":
            SYSTEM_CONF.unlink()
        for name in reversed(DAEMONS):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> "SlurmCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    why = unavailable()
    if why:
        sys.exit(f"no test cluster: {why}")

    def _end(signum, frame):  # `kill PID`/`kill %1` (SIGTERM), a closed terminal, or Ctrl-C: stop it cleanly
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # a background job may start with SIGINT ignored
        signal.signal(s, _end)
    # Declared as large as the embedded params' requests (training: 8 CPUs, 64 GB, 1 GPU), so
    # `snakemake --profile slurm all` schedules unchanged on a small host (which it oversubscribes).
    with SlurmCluster.start(Path(sys.argv[1]), cpus=16, mem_mb=131072) as cluster:
        print(f"export SLURM_CONF={cluster.conf} SLURM_PARTITION=test SLURM_ACCOUNT=  "
              f"# node {cluster.node}: {cluster.cpus} CPUs, {cluster.gpus} fake GPUs, idle; Ctrl-C stops it", flush=True)
        signal.pause()
