# Shared by every rule file: the validated params, resources and launchers. Stages, paths and
# params keys come from gear/dag.py (stages.smk), so the Snakefile holds no logic of its own.

import re

from gear import paths
from gear.config import AR_SIZES
from gear import dag
from gear.dag import load_params

PARAMS_FILE = config.get("params", "params.yaml")  # snakemake --config params=presets/imagenet256.yaml
P = load_params(PARAMS_FILE)  # a bad params file stops here with a one-line ParamsError
R = P.resources

SEEDS = P.study.seeds  # only the report's inputs list them: adding one reruns nothing of the others

wildcard_constraints:
    arm="|".join(paths.AR_ARMS),
    variant="|".join(re.escape(v) for v in paths.tune_variants(P)),
    size="|".join(AR_SIZES),
    seed=r"\d+",


def logfile(rule_name, *wildcards):
    """logs/<rule>/<wildcards>.log (run.log for rules without wildcards)."""
    stem = "/".join("{" + w + "}" for w in wildcards) or "run"
    return f"logs/{rule_name}/{stem}.log"


def benchfile(rule_name, *wildcards):
    return dag.benchfile(P.stage2, rule_name, ["{" + w + "}" for w in wildcards])


# ---- resources: params.resources -> slurm executor keys (gpu, cpus_per_task, mem_mb, runtime, nodes)

# Snakemake exports OMP_NUM_THREADS = a job's threads (1 unless set), and torch's float
# reductions depend on the thread count: at 1 thread the embedded DAG's results differ from
# `dvc repro`'s (torch's default: every core), e.g. tokenizer-init val PSNR 22.3 vs 21.5. Giving
# each job its cpus (capped by --cores) makes a local run use the same threads as dvc repro.
TRAIN_THREADS, LIGHT_THREADS = R.train_cpus, R.light_cpus
LIGHT = dict(cpus_per_task=R.light_cpus, mem_mb=R.light_mem_mb, runtime=R.light_runtime, nodes=1)

# SIGTERM two minutes before the time limit: training saves its resumable state and exits, and
# the profile's `retries` resubmits the job, which resumes. (Not SIGUSR1: the plugin's in-step
# snakemake process has no USR1 handler and would die, taking the step down; it treats SIGTERM
# gracefully, and torchrun forwards SIGTERM to its workers.) Preemption: sbatch --requeue.
TRAIN = dict(cpus_per_task=R.train_cpus, mem_mb=R.train_mem_mb, runtime=R.train_runtime,
             nodes=R.train_nodes, slurm_extra="--signal=TERM@120")
if R.train_nodes > 1:
    # With `mpi` the plugin runs the rule in the batch step (no srun of its own) and the rule's
    # `srun` starts one torchrun per node. gres is per node (`gpu` would be the job total);
    # tasks_per_gpu=0 keeps the plugin from turning `tasks` into --ntasks-per-gpu.
    TRAIN.update(gres=f"gpu:{R.train_gpus}", mpi="srun", tasks=R.train_nodes, tasks_per_gpu=0)
    # $(hostname) runs in the batch step, on the first node of the allocation: the rendezvous host.
    TRAIN_LAUNCH = (f"srun --nodes={R.train_nodes} --ntasks-per-node=1 torchrun --no-python "
                    f"--nnodes={R.train_nodes} --nproc_per_node={R.train_gpus} --rdzv-id=$SLURM_JOB_ID "
                    f"--rdzv-backend=c10d --rdzv-endpoint=$(hostname):29500 ")
else:
    TRAIN.update(gpu=R.train_gpus)
    TRAIN_LAUNCH = (f"torchrun --no-python --standalone --nproc_per_node={R.train_gpus} "
                    if R.train_gpus > 1 else "")  # else one process
