"""Launchers: the grid's stages as jobs of submitit (https://github.com/facebookincubator/submitit),
each its own process, independent stages at once.

    sslr grid --config G.yaml --launcher local [--max-parallel N]   # this machine
    sslr grid --config G.yaml --launcher slurm                      # sbatch, the file's slurm:
    sslr grid --config G.yaml --status                              # each stage's state

The stages form a graph (:func:`stage_graph`): a backbone's pretraining, then its fine-tunings
at once (every rule's, of every seed), then their attacks (one whose ``transfer`` surrogate is
bp's fine-tuned model also waits for bp's fine-tuning of the same seed), then the report. The
submitting command drives it (:class:`Driver`): it submits what is ready, polls the jobs, and
submits what became ready, printing each stage's state changes and an ETA. A job runs
:func:`run_stage`, the same stage code as the inline launcher (:meth:`GridRun.run_one`), which
writes the stage's ``done.json``: the markers stay the one record of what is done, so
``sslr grid`` run again after anything (a failed job, a crash of the submitting shell) resumes and
never repeats a finished stage. A stage's lock (``<out>/.grid/<stage>/.sslr.lock``, held by
whoever runs it) keeps one stage from running twice at once; the submitter holds the grid
folder's lock, so a second ``sslr grid`` on the same folder is refused while it runs. The stage
folder's ``job.json`` names its last job, its state and its log files (submitit's, in
``<out>/.grid/jobs/``).

A job stopped by its time limit or preempted is requeued by submitit (:class:`StageJob`'s
``checkpoint``) and resumes its fit from ``last.ckpt`` (the grid's own resume). ``local`` runs
at most ``--max-parallel`` jobs at once (default: one per visible GPU, each pinned to its own
through CUDA_VISIBLE_DEVICES; 1 without GPUs, see :func:`default_max_parallel`). CPU jobs at once keep torch's default thread
count, as the inline launcher has it, so their numbers are the inline launcher's to the bit; set
OMP_NUM_THREADS to split the cores between them instead. ``slurm`` submits the stages of a kind
that are ready together as one job array (at most ``array_parallelism`` running).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from sslr.grid.markers import now, read_json, write_json
from sslr.grid.spec import KINDS, SLURM_DEFAULTS, SURROGATE, Grid, GridError
from sslr.grid.stages import (
    STAGES_DIR,
    GridRun,
    check_layout,
    grid_context,
    marker_path,
    seeds_shown,
    stage_folder,
)

LAUNCHERS = ("inline", "local", "slurm")
JOB = "job.json"  # in the stage folder: the launcher's last job of the stage
POLL_S = 1.0
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's LocalExecutor stops a job after 2 minutes unless told
# submitit job states that mean the job still waits or runs (slurm's, and the local ones).
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")


@dataclasses.dataclass(frozen=True)
class Stage:
    label: str  # as the progress lines say it: "finetune resnet18/usf" (with several seeds
    # "finetune resnet18/usf seed 1"), "report"
    kind: str  # pretrain, finetune, attack, report
    after: tuple[str, ...]  # the labels of the stages it consumes


def stage_graph(grid: Grid) -> list[Stage]:
    """The grid's stages in the inline launcher's order, each with the stages it waits for:
    per backbone its pretraining, then per seed the fine-tunings and their attacks (an attack
    waits for its fine-tuning and bp's, the transfer surrogate, of the same seed)."""
    stages: list[Stage] = []
    for backbone in grid.backbones:
        pretrain = () if grid.weights else (grid.label("pretrain", backbone, "bp"),)
        if pretrain:
            stages.append(Stage(pretrain[0], "pretrain", ()))
        for seed in grid.seeds:
            for rule in grid.rules:
                label = grid.label("finetune", backbone, rule, seed)
                stages.append(Stage(label, "finetune", pretrain))
            for rule in grid.rules:
                after = [grid.label("finetune", backbone, rule, seed)]
                if SURROGATE in grid.rules and rule != SURROGATE:
                    after.append(grid.label("finetune", backbone, SURROGATE, seed))
                label = grid.label("attack", backbone, rule, seed)
                stages.append(Stage(label, "attack", tuple(after)))
    fits = tuple(s.label for s in stages)
    stages.append(Stage("report", "report", fits))
    return stages


# --------------------------------------------------------------------------- what a job runs


def run_stage(config: str, out: str, label: str) -> dict:
    """One stage of the grid file ``config`` in the grid folder ``out`` (absolute paths), unless
    it is done: the job's function; the stage writes its own marker."""
    from sslr.grid.spec import load_grid

    with grid_context():
        runner = GridRun(load_grid(config, out=out))
        runner.rank = _task_rank()
        runner.run_one(label)
    return {"ran": runner.ran, "label": label}


def _task_rank() -> int:
    """This task's rank in a job of several (a stage on several GPUs: a task per GPU)."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        return int(os.environ.get("SLURM_PROCID", "0") or 0)
    return 0


@dataclasses.dataclass
class StageJob:
    """The callable a job pickles: :func:`run_stage`; on a time limit or preemption submitit
    calls :meth:`checkpoint` and requeues it, and the stage resumes from its ``last.ckpt``."""

    config: str
    out: str
    label: str

    def __call__(self) -> dict:
        return run_stage(self.config, self.out, self.label)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self)  # the fit's own last.ckpt is the state


# --------------------------------------------------------------------------- jobs' resources


def stage_devices(runner: GridRun, kind: str) -> int:
    """How many devices the stage's command asks for (``trainer.devices``; 1 when it says
    ``auto`` or -1, which a job cannot size); the report none."""
    if kind == "report":
        return 0
    if not runner.commands.settings:
        runner.commands.check()
    settings = runner.commands.settings.get(kind) or runner.commands.settings.get("finetune", {})
    devices = (settings.get("trainer") or {}).get("devices", 1)
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    if isinstance(devices, str) and "," in devices:
        return max(1, len([d for d in devices.split(",") if d.strip()]))
    try:
        return max(1, int(devices))
    except (TypeError, ValueError):
        return 1


def slurm_parameters(grid: Grid, kind: str, devices: int, name: str) -> dict:
    """submitit SlurmExecutor parameters of one stage kind: the grid file's slurm section; a
    stage on several devices gets that many GPUs and one task per GPU (Lightning's DDP on
    SLURM), its CPUs split between them."""
    slurm = grid.slurm if grid.slurm is not None else {}
    resources = slurm.get(kind, SLURM_DEFAULTS[kind])
    gpus = max(resources["gpus"], devices) if kind != "report" else resources["gpus"]
    tasks = devices if devices > 1 else 1
    parameters = {
        "job_name": name,
        "time": resources["time"],
        "mem": resources["mem"],
        "nodes": 1,
        "ntasks_per_node": tasks,
        "cpus_per_task": max(1, resources["cpus"] // tasks),
        "array_parallelism": slurm.get("array_parallelism", 256),
        "stderr_to_stdout": False,
    }
    if gpus:
        parameters["gpus_per_node"] = gpus
    for key in ("partition", "account"):
        if slurm.get(key):
            parameters[key] = slurm[key]
    if slurm.get("sbatch"):
        parameters["additional_parameters"] = dict(slurm["sbatch"])
    if slurm.get("setup"):
        parameters["setup"] = list(slurm["setup"])
    return parameters


def slurm_executor(grid: Grid, kind: str, devices: int, folder: Path):
    """A submitit SlurmExecutor for one stage kind (nothing submitted: :meth:`submit` does)."""
    from submitit import SlurmExecutor

    executor = SlurmExecutor(folder=folder, max_num_timeout=3)
    executor.update_parameters(**slurm_parameters(grid, kind, devices, f"sslr-{grid.name}"))
    return executor


def visible_gpus() -> list[int]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES numbers them (ints only)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        ids = [g.strip() for g in given.split(",") if g.strip()]
        if all(g.isdigit() for g in ids):
            return [int(g) for g in ids][:count]
    return list(range(count))


def default_max_parallel(gpus: list[int]) -> int:
    """One job per visible GPU; one at a time without GPUs: CPU jobs at once each take every
    core (torch's default threads) and only slow each other down (benchmarks/grid_launchers.py:
    two at once on 2 cores took 1.8x to 3.6x the inline wall time), so parallel CPU jobs are
    asked for with --max-parallel, and OMP_NUM_THREADS splitting the cores."""
    return len(gpus) if gpus else 1


def describe(grid: Grid, launcher: str, kind: str, devices: int, gpus: list[int]) -> str:
    """A job's resources, as a dry run shows them."""
    if launcher == "slurm":
        p = slurm_parameters(grid, kind, devices, "")
        where = ", ".join(f"{k} {p[k]}" for k in ("partition", "account") if k in p)
        return (
            f"{where + ', ' if where else ''}{p.get('gpus_per_node', 0)} GPU, "
            f"{p['ntasks_per_node']} task, {p['cpus_per_task']} CPU per task, mem {p['mem']}, "
            f"{p['time']} min"
        )
    n = min(devices, len(gpus)) if gpus else 0
    return f"{n} GPU" if n else "CPU"


# --------------------------------------------------------------------------- the driver


@dataclasses.dataclass
class _Running:
    stage: Stage
    job: object  # a submitit Job
    gpus: list[int]
    began: float
    said_running: bool = False


class Driver:
    """Submits the grid's stages as jobs in the order the graph allows and waits for them."""

    def __init__(
        self,
        grid: Grid,
        config: Path,
        launcher: str,
        max_parallel: int | None,
        echo,
        dry_run: bool = False,
    ) -> None:
        if launcher == "slurm" and not dry_run:
            import shutil

            if shutil.which("sbatch") is None or shutil.which("srun") is None:
                raise GridError(
                    "--launcher slurm: sbatch and srun not found (run it on the cluster's login "
                    "node; --dry-run shows the jobs anywhere)"
                )
        self.grid = dataclasses.replace(grid, out=grid.out.resolve())
        self.config = str(Path(config).resolve())
        self.launcher = launcher
        self.echo = echo
        self.runner = GridRun(self.grid, echo=lambda line: None)
        self.gpus = visible_gpus() if launcher == "local" else []
        self.max_parallel = max_parallel or default_max_parallel(self.gpus)
        self.stages = stage_graph(self.grid)
        self.ran = self.skipped = 0
        self.failed: dict[str, str] = {}  # label -> its log file
        self.began = time.perf_counter()

    # ---- the graph --------------------------------------------------------------------------

    def dry_run(self) -> None:
        """The inline dry run's decisions and commands, then the jobs and what each waits for."""
        GridRun(self.grid, dry_run=True, echo=self.echo).execute()
        limit = f", at most {self.max_parallel} at once" if self.launcher == "local" else ""
        self.echo(f"sslr grid: jobs (--launcher {self.launcher}{limit}):")
        for stage in self.stages:
            devices = stage_devices(self.runner, stage.kind)
            after = f" after {', '.join(stage.after)}" if stage.after else ""
            after = " after every stage above" if stage.kind == "report" else after
            what = describe(self.grid, self.launcher, stage.kind, devices, self.gpus)
            self.echo(f"    {stage.label}{after} [{what}]")

    def run(self) -> None:
        self.runner.commands.check()
        check_layout(self.grid)
        n = len(self.stages)
        self.echo(
            f"sslr grid: {self.grid.name}: {', '.join(self.grid.backbones)} x "
            f"{', '.join(self.grid.rules)}{seeds_shown(self.grid)} -> {self.grid.out} ({n} "
            f"stages, --launcher "
            f"{self.launcher}"
            + (f", at most {self.max_parallel} at once)" if self.launcher == "local" else ")")
        )
        state = {s.label: "waiting" for s in self.stages}
        running: dict[str, _Running] = {}
        free = list(self.gpus)
        try:
            while True:
                for stage in self.stages:
                    if state[stage.label] == "elsewhere":  # back to waiting once it ended
                        if not _lock_holder(stage_folder(self.grid.out, stage.label)):
                            state[stage.label] = "waiting"
                            self.runner.forget(self.grid.out)
                    if state[stage.label] == "waiting":
                        self._check(stage, state, running)
                batch = []
                for stage in [s for s in self.stages if state[s.label] == "ready"]:
                    if self.launcher == "local" and len(running) + len(batch) >= self.max_parallel:
                        break  # the ones already in this batch count: they start with it
                    devices = stage_devices(self.runner, stage.kind)
                    need = min(devices, len(self.gpus)) if self.gpus else 0
                    if need > len(free):
                        break
                    gpus, free = free[:need], free[need:]
                    batch.append((stage, devices, gpus))
                for (stage, _, gpus), job in zip(batch, self._submit(batch), strict=True):
                    running[stage.label] = _Running(stage, job, gpus, time.perf_counter())
                    state[stage.label] = "running"
                    verb = "running" if self.launcher == "local" else "submitted"
                    self._say(state, stage.label, f"{verb} (job {job.job_id}, log {_log(job)})")
                if not running and "elsewhere" not in state.values():
                    break
                time.sleep(POLL_S)
                for label, item in list(running.items()):
                    if self.launcher == "slurm" and not item.said_running:
                        if str(item.job.state).upper() == "RUNNING":
                            item.said_running = True
                            self._say(state, label, "running")
                    if not item.job.done():
                        continue
                    del running[label]
                    free = sorted(free + item.gpus)
                    self._finished(state, item)
        except KeyboardInterrupt:
            if self.launcher == "local":  # this machine's jobs end with the command
                for item in running.values():
                    item.job.cancel()
            raise
        blocked = [label for label, s in state.items() if s == "blocked"]
        if self.failed:
            first, log = next(iter(self.failed.items()))
            more = f" and {len(self.failed) - 1} more" if len(self.failed) > 1 else ""
            waits = f"; {len(blocked)} stages after them did not run" if blocked else ""
            raise GridError(
                f"{first} failed{more} (log: {log}){waits}: fix it and run sslr grid again to "
                "resume (sslr grid --status lists every stage)"
            )

    def _check(self, stage: Stage, state: dict, running: dict) -> None:
        """A waiting stage whose inputs are settled: done (skipped), blocked (one failed),
        adopted (a job a previous submitter left on the cluster) or ready to submit."""
        if any(state[a] in ("failed", "blocked") for a in stage.after):
            state[stage.label] = "blocked"
            return
        if not all(state[a] == "done" for a in stage.after):
            return
        if self.runner.probe(stage.label):
            state[stage.label] = "done"
            self.skipped += 1
            marker = _marker(self.grid, stage.label) or {}
            self._say(state, stage.label, f"skipped (done {marker.get('finished', '')})")
            return
        holder = _lock_holder(stage_folder(self.grid.out, stage.label))
        if holder:  # a job an earlier submitter left running: waited for, not run twice
            state[stage.label] = "elsewhere"
            self._say(state, stage.label, f"running elsewhere ({holder}): waiting for it")
            return
        adopted = self._adopt(stage)
        if adopted is not None:
            running[stage.label] = adopted
            state[stage.label] = "running"
            job = adopted.job.job_id
            self._say(state, stage.label, f"already submitted (job {job}): waiting for it")
            return
        state[stage.label] = "ready"

    # ---- one job ----------------------------------------------------------------------------

    def _executor(self, kind: str, devices: int, gpus: list[int]):
        folder = self.grid.out / STAGES_DIR / "jobs"
        if self.launcher == "slurm":
            return slurm_executor(self.grid, kind, devices, folder)
        from submitit import LocalExecutor

        executor = LocalExecutor(folder=folder, max_num_timeout=3)
        parameters: dict = {"timeout_min": LOCAL_TIMEOUT_MIN}
        if gpus:
            parameters |= {"gpus_per_node": len(gpus), "visible_gpus": gpus}
        executor.update_parameters(**parameters)
        return executor

    def _submit(self, batch: list[tuple[Stage, int, list[int]]]) -> list:
        """Submit stages (stage, devices, GPUs); on slurm those of one kind and size together,
        as one job array. Returns their jobs, in order."""
        jobs: dict[str, object] = {}
        groups: dict[tuple, list] = {}
        for stage, devices, gpus in batch:
            key = (stage.kind, devices) if self.launcher == "slurm" else (stage.label,)
            groups.setdefault(key, []).append((stage, devices, gpus))
        for group in groups.values():
            stage, devices, gpus = group[0]
            executor = self._executor(stage.kind, devices, gpus)
            calls = [StageJob(self.config, str(self.grid.out), s.label) for s, _, _ in group]
            if len(calls) > 1:  # one array; each job's StageJob keeps its checkpoint()
                with executor.batch():
                    submitted = [executor.submit(call) for call in calls]
            else:
                submitted = [executor.submit(calls[0])]
            for (stage, _, _), job in zip(group, submitted, strict=True):
                jobs[stage.label] = job
                _write_job(self.grid.out, stage.label, job, self.launcher, "submitted")
        return [jobs[stage.label] for stage, _, _ in batch]

    def _adopt(self, stage: Stage) -> _Running | None:
        """A job of the stage a previous submitter left queued or running on the cluster
        (its job.json): waited for, not submitted again."""
        record = read_json(stage_folder(self.grid.out, stage.label) / JOB)
        if self.launcher != "slurm" or not record or record.get("launcher") != "slurm":
            return None
        from submitit import SlurmJob

        job = SlurmJob(self.grid.out / STAGES_DIR / "jobs", str(record["job_id"]))
        if str(job.state).upper() not in ACTIVE:
            return None
        return _Running(stage, job, [], time.perf_counter())

    def _finished(self, state: dict, item: _Running) -> None:
        label = item.stage.label
        self.runner.forget(self.grid.out)  # its checkpoints were written by another process
        try:
            item.job.result()
        except Exception as err:  # noqa: BLE001 (a job's failure, whatever it was: its log says)
            state[label] = "failed"
            log = _log(item.job)
            self.failed[label] = log
            _write_job(self.grid.out, label, item.job, self.launcher, "failed")
            reason = _last_line(err)
            self._say(state, label, f"failed: {reason} (log: {log})")
            return
        _write_job(self.grid.out, label, item.job, self.launcher, "done")
        state[label] = "done"
        self.ran += 1
        marker = _marker(self.grid, label) or {}
        seconds = marker.get("seconds", round(time.perf_counter() - item.began, 1))
        self._say(state, label, f"ran in {seconds} s (job {item.job.job_id})", finished=True)

    def _say(self, state: dict, label: str, what: str, finished: bool = False) -> None:
        settled = sum(s in ("done", "failed") for s in state.values())
        left = len(state) - settled - sum(s == "blocked" for s in state.values())
        if finished and left:  # jobs at once finish at that rate: left / (ran per second)
            elapsed = time.perf_counter() - self.began
            what += f"; {left} left, ETA {elapsed / max(1, self.ran) * left:.0f} s"
        index = self.stages.index(next(s for s in self.stages if s.label == label)) + 1
        self.echo(f"sslr grid: [{index}/{len(self.stages)}] {label}: {what}")


# --------------------------------------------------------------------------- --status


def grid_status(grid: Grid, echo) -> dict[str, str]:
    """Each stage's state: done, running, queued, failed (with its log), waiting (for a stage
    it consumes), or not done; one line each. Returns label -> state."""
    runner = GridRun(grid, echo=lambda line: None)
    runner.commands.check()
    states: dict[str, str] = {}
    for stage in stage_graph(grid):
        folder = stage_folder(grid.out, stage.label)
        record = read_json(folder / JOB) or {}
        holder = _lock_holder(folder)
        done = runner.probe(stage.label)
        if done:
            state, what = (
                "done",
                f"done {(_marker(grid, stage.label) or {}).get('finished', '')}",
            )
        elif holder:
            state, what = "running", f"running ({holder}; log {record.get('stdout', '-')})"
        elif record.get("state") == "failed":
            state = "failed"
            what = f"failed (log: {record.get('stderr')}, {record.get('stdout')})"
        elif record.get("state") == "submitted" and _alive(grid.out, stage.label, record):
            state, what = "queued", f"queued (job {record.get('job_id')})"
        elif done is None:
            waits = [a for a in stage.after if states.get(a) != "done"]
            state, what = "waiting", f"waiting for {', '.join(waits) or 'a stage it consumes'}"
        else:
            state, what = "not done", "not done"
        states[stage.label] = state
        echo(f"sslr grid: {stage.label}: {what}")
    return states


def _lock_holder(folder: Path) -> str | None:
    """Who holds the stage's lock (its ``process N`` line), or None when it is free."""
    import fcntl

    path = folder / ".sslr.lock"
    if not path.is_file():
        return None
    with path.open() as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _alive(out: Path, label: str, record: dict) -> bool:
    """Whether a submitted job (job.json) still waits or runs."""
    if record.get("launcher") == "local":
        try:
            os.kill(int(record["job_id"]), 0)
        except (OSError, ValueError, KeyError):
            return False
        return True
    try:
        from submitit import SlurmJob

        job = SlurmJob(out / STAGES_DIR / "jobs", str(record["job_id"]))
        return str(job.state).upper() in ACTIVE
    except Exception:  # noqa: BLE001 (no sacct here: not known to be alive)
        return False


# --------------------------------------------------------------------------- helpers


def _marker(grid: Grid, label: str) -> dict | None:
    try:
        return read_json(marker_path(grid, label))
    except GridError:
        return None


def _log(job) -> str:
    return str(job.paths.stderr).replace("%t", "0")


def _write_job(out: Path, label: str, job, launcher: str, state: str) -> None:
    paths = job.paths
    record = {
        "label": label,
        "launcher": launcher,
        "job_id": str(job.job_id),
        "state": state,
        "stdout": str(paths.stdout).replace("%t", "0"),
        "stderr": str(paths.stderr).replace("%t", "0"),
        "updated": now(),
    }
    folder = stage_folder(out, label)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / JOB, record)


def _last_line(err: BaseException) -> str:
    """A failed job's error in one line: the last non-empty line of what submitit raised."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    return text if len(text) < 300 else text[:297] + "..."


__all__ = [
    "KINDS",
    "LAUNCHERS",
    "Driver",
    "Stage",
    "StageJob",
    "grid_status",
    "run_stage",
    "slurm_executor",
    "slurm_parameters",
    "stage_graph",
]
