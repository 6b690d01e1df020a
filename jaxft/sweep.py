"""Hyper-parameter search: every trial is the ordinary train command in its own process and workdir.

    python -m jaxft.main sweep --config configs/ner.py --space sweeps/ner_lr_epochs.py --workdir runs/sweep \
        [--parallel 1] [--trials N] [--seed 0] [--metric dev.f1] [--mode max] [--config.KEY=VALUE ...]

Trial i runs `python -m jaxft.main --config RECIPE --workdir WORKDIR/trial-00i --config.KEY=VALUE ...` (the
space's values, plus any --config.* given to the sweep, which every trial shares). A trial that exits
non-zero is recorded as failed with the tail of its stderr and the sweep goes on; at most --parallel trials
run at once. A trial's score is read from its results.json (by default the dev value of the task's main
metric: NER f1, classification accuracy/micro F1/pearson, masked-LM perplexity, lower is better).

Resuming: re-run the same command. The plan (sweep.json) is checked against the space; finished trials
(results.json present) and failed ones (failed.json) are reused, the others are started again and resume
from their own checkpoints, since the train command does. Trials die with the sweep process (Linux
PDEATHSIG), so a killed sweep leaves no orphan writing into a trial's workdir; a lock file refuses a second
sweep on the same workdir. --retry-failed runs failed trials again.

Outputs in WORKDIR: results.md / results.csv / results.jsonl (one row per trial), sweep.png (score against
each swept key), best_config.py (the recipe with the best trial's overrides, a --config file) and
best_command.txt (the command line that reruns it).

Optuna is not used: with grid and seeded random search over trials that are processes resuming from their
own workdirs, the sweep needs no study storage, and with the few trials that a CPU (or a single accelerator)
affords here, a model-based sampler (TPE) has too little history to beat random search. A sampler could be
added behind the same plan file if sweeps grow to dozens of trials.
"""

from __future__ import annotations

import argparse
import fcntl
import shlex
import csv
import dataclasses
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jaxft import sweep_space
from jaxft.config import ConfigError, load_recipe, suggest
from jaxft.config import keys as config_keys

PLAN_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"
FAILED_FILE = "failed.json"
LOWER_IS_BETTER = ("perplexity", "loss", "mse", "rmse", "mae")
STDERR_TAIL = 3000


class SweepError(ValueError):
    """A sweep that cannot start: one line on stderr, exit status 2."""


def log(message: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- config values

def coerce(dotted: str, value: Any) -> Any:
    """A value (or command-line text) as the type the schema gives the config key it sets (jaxft.config);
    unknown keys are refused with the nearest known one."""
    known = dict(config_keys())
    if dotted not in known:
        raise SweepError(f"unknown config key {dotted!r}" + suggest(dotted, known))
    kind = known[dotted].type
    if kind is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise SweepError(f"config key {dotted!r} is a bool; got {value!r}")
            return value.lower() in ("true", "1")
        return bool(value)
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
    except ValueError:
        raise SweepError(f"config key {dotted!r} is a {kind.__name__}; got {value!r}") from None
    return value if isinstance(value, str) else str(value)


def flag_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------- plan

@dataclasses.dataclass
class Trial:
    index: int
    overrides: dict[str, Any]

    @property
    def name(self) -> str:
        return f"trial-{self.index:03d}"


def make_plan(args, shared: dict[str, Any]) -> dict:
    space = sweep_space.load_space(args.space)
    trial_list = sweep_space.trials(space, args.trials, args.seed)
    for overrides in trial_list:
        for key in list(overrides):
            overrides[key] = coerce(key, overrides[key])
    return {"recipe": str(Path(args.config).resolve()), "space_file": str(Path(args.space).resolve()),
            "space": sweep_space.describe(space), "swept": sweep_space.swept_keys(space), "seed": args.seed,
            "shared_overrides": shared, "trials": trial_list}


def reconcile(workdir: Path, plan: dict) -> dict:
    """A workdir's existing plan must be the same sweep (a longer list of trials extends it)."""
    path = workdir / PLAN_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        same = all(saved.get(k) == plan[k] for k in ("recipe", "space", "seed", "shared_overrides"))
        prefix = saved.get("trials", [])[:len(plan["trials"])] == plan["trials"][:len(saved.get("trials", []))]
        if not (same and prefix):
            raise SweepError(f"{workdir} holds another sweep ({path}: other recipe, space, seed, shared overrides or "
                             f"trials); use another --workdir")
        if len(saved["trials"]) > len(plan["trials"]):
            plan = {**plan, "trials": saved["trials"]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan, indent=2) + "\n")
    os.replace(tmp, path)
    return plan


# ---------------------------------------------------------------------------------------------- running trials

def trial_command(plan: dict, trial: Trial, workdir: Path) -> list[str]:
    overrides = {**plan["shared_overrides"], **trial.overrides}
    flags = [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]
    if "train.progress_bar" not in overrides:
        flags.append("--config.train.progress_bar=False")
    return [sys.executable, "-m", "jaxft.main", "--config", plan["recipe"], "--workdir",
            str(workdir / trial.name), *flags]


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        import ctypes  # Linux only: PR_SET_PDEATHSIG
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def trial_state(workdir: Path, trial: Trial) -> str:
    folder = workdir / trial.name
    if (folder / "results.json").exists():
        return "finished"
    if (folder / FAILED_FILE).exists():
        return "failed"
    return "pending"


class Runner:
    def __init__(self, workdir: Path, plan: dict, parallel: int):
        self.workdir, self.plan, self.parallel = workdir, plan, parallel
        self.running: dict[int, tuple[Trial, subprocess.Popen, int, float]] = {}

    def start(self, trial: Trial) -> None:
        folder = self.workdir / trial.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FAILED_FILE).unlink(missing_ok=True)
        command = trial_command(self.plan, trial, self.workdir)
        (folder / "command.txt").write_text(" ".join(_quote(c) for c in command) + "\n")
        stderr_path = folder / "stderr.log"
        offset = stderr_path.stat().st_size if stderr_path.exists() else 0
        with open(folder / "stdout.log", "ab") as out, open(stderr_path, "ab") as err:
            process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                       preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        resumed = (folder / "checkpoints").exists()
        log(f"{trial.name} {'resumed' if resumed else 'started'}: " +
            " ".join(f"{k}={flag_value(v)}" for k, v in trial.overrides.items()))
        self.running[trial.index] = (trial, process, offset, time.time())

    def poll(self) -> list[Trial]:
        done = []
        for index, (trial, process, offset, started) in list(self.running.items()):
            code = process.poll()
            if code is None:
                continue
            del self.running[index]
            folder = self.workdir / trial.name
            if code == 0 and (folder / "results.json").exists():
                log(f"{trial.name} finished in {time.time() - started:.0f} s")
            else:
                with open(folder / "stderr.log", "rb") as f:
                    f.seek(offset)
                    tail = f.read().decode("utf-8", errors="replace")[-STDERR_TAIL:]
                reason = "no results.json (stopped early?)" if code == 0 else f"exit status {code}"
                _write_json(folder / FAILED_FILE, {"returncode": code, "reason": reason, "stderr_tail": tail})
                last = [line for line in tail.splitlines() if line.strip()][-1:] or [""]
                log(f"{trial.name} FAILED ({reason}): {last[0][:200]}")
            done.append(trial)
        return done

    def run(self, queue: list[Trial], on_done) -> None:
        queue = list(queue)
        while queue or self.running:
            while queue and len(self.running) < self.parallel:
                self.start(queue.pop(0))
            time.sleep(0.3)
            if self.poll():
                on_done()


def _quote(text: str) -> str:
    return shlex.quote(text)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- reports

def resolve_metric(metric: str, results: dict) -> tuple[str, str]:
    """(split, name): "dev.f1" as given, "f1" as dev's, "" as the task's main metric on dev."""
    if not metric:
        return "dev", results.get("main_metric") or "f1"
    split, dot, name = metric.partition(".")
    return (split, name) if dot else ("dev", metric)


def metric_mode(name: str, mode: str) -> str:
    if mode != "auto":
        return mode
    return "min" if name in LOWER_IS_BETTER else "max"


def collect(workdir: Path, plan: dict, metric: str) -> tuple[list[dict], str]:
    rows, label = [], metric or "dev"
    for index, overrides in enumerate(plan["trials"]):
        trial = Trial(index, overrides)
        folder = workdir / trial.name
        row = {"trial": trial.name, "status": trial_state(workdir, trial)}
        row.update({k: overrides[k] for k in overrides})
        row.update(score=None, test_score=None, train_seconds=None, error="")
        if row["status"] == "finished":
            results = json.loads((folder / "results.json").read_text())
            split, name = resolve_metric(metric, results)
            label = f"{split}.{name}"
            row["score"] = _number(results.get(split, {}).get(name))
            row["test_score"] = _number(results.get("test", {}).get(name)) if split == "dev" else None
            row["train_seconds"] = _number(results.get("train_seconds"))
        elif row["status"] == "failed":
            failed = json.loads((folder / FAILED_FILE).read_text())
            lines = [l for l in failed.get("stderr_tail", "").splitlines() if l.strip()]
            row["error"] = (lines[-1] if lines else failed.get("reason", ""))[:300]
        rows.append(row)
    return rows, label


def _number(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def best_row(rows: list[dict], mode: str) -> dict | None:
    scored = [r for r in rows if r["score"] is not None and not math.isnan(r["score"])]
    if not scored:
        return None
    key = (lambda r: r["score"]) if mode == "min" else (lambda r: -r["score"])
    return min(scored, key=key)  # ties: the earlier trial


def write_reports(workdir: Path, plan: dict, metric: str, mode_arg: str) -> dict | None:
    rows, label = collect(workdir, plan, metric)
    mode = metric_mode(label.split(".")[-1], mode_arg)
    best = best_row(rows, mode)
    columns = list(rows[0].keys()) if rows else []
    with open(workdir / "results.jsonl.tmp", "w") as f:
        for row in rows:
            f.write(json.dumps({**row, "best": best is row, "metric": label}) + "\n")
    os.replace(workdir / "results.jsonl.tmp", workdir / "results.jsonl")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns + ["best"])
    for row in rows:
        writer.writerow([_cell(row[c]) for c in columns] + [int(best is row)])
    (workdir / "results.csv").write_text(buffer.getvalue())
    (workdir / "results.md").write_text(markdown_table(rows, columns, label, mode, best, plan))
    _plot(workdir / "sweep.png", rows, plan["swept"] or list(plan["trials"][0].keys()), label, best)
    if best is not None:
        write_best(workdir, plan, best, label)
    return best


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def markdown_table(rows, columns, label, mode, best, plan) -> str:
    shown = [c for c in columns if c != "error"]
    names = {"score": label, "test_score": "test." + label.split(".", 1)[-1] if label.startswith("dev.") else "test"}
    head = [names.get(c, c) for c in shown]
    lines = [f"Sweep of {Path(plan['recipe']).name} over {Path(plan['space_file']).name} "
             f"({'lower' if mode == 'min' else 'higher'} {label} is better; best marked *)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [_cell(row[c]) for c in shown]
        if best is row:
            cells[0] = f"**{cells[0]}** *"
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "Failed trials (last stderr line):"] + [f"- {r['trial']}: `{r['error']}`" for r in failed]
    return "\n".join(lines) + "\n"


def _plot(path: Path, rows, keys, label, best) -> None:
    import matplotlib  # matplotlib loads only where a plot is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (ditto), after the headless backend is set

    finished = [r for r in rows if r["score"] is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for axis, key in zip(axes[0], keys):
        values = [r[key] for r in finished]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        xs = values if numeric else [str(v) for v in values]
        axis.scatter(xs, [r["score"] for r in finished], color="tab:blue")
        if best is not None and best in finished:
            axis.scatter([best[key] if numeric else str(best[key])], [best["score"]], color="tab:red", s=90,
                         marker="*", label=f"best ({best['trial']})", zorder=3)
            axis.legend(fontsize=8)
        if numeric and values and min(values) > 0 and max(values) / min(values) >= 20:
            axis.set_xscale("log")
        if numeric and 0 < len(set(values)) <= 8:  # few distinct values: label them as written (1e-4, not 0.0001)
            axis.set_xticks(sorted(set(values)), [f"{v:g}" for v in sorted(set(values))])
        axis.set_xlabel(key)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    failed = sum(r["status"] == "failed" for r in rows)
    fig.suptitle(f"{len(finished)} finished trials" + (f", {failed} failed" if failed else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_best(workdir: Path, plan: dict, best: dict, label: str) -> None:
    overrides = {**plan["shared_overrides"], **plan["trials"][int(best["trial"].split("-")[1])]}
    config_path = workdir / "best_config.py"
    score = f"{label} {best['score']:.4f}" + (f" (test {best['test_score']:.4f})" if best["test_score"] is not None else "")
    command = (f"python -m jaxft.main --config {_quote(str(config_path))} --workdir "
               f"{_quote(str(workdir / 'best'))}")
    flags = " ".join(f"--config.{k}={_quote(flag_value(v))}" for k, v in overrides.items())
    config_path.write_text(
        f'"""Best trial of the sweep in {workdir}: {best["trial"]}, {score}.\n\n'
        f"Run it:\n    {command}\nor, the same, from the recipe:\n"
        f"    python -m jaxft.main --config {plan['recipe']} {flags}\n\"\"\"\n\n"
        "import importlib.util\n\n"
        f"RECIPE = {plan['recipe']!r}\n"
        f"OVERRIDES = {json.dumps(overrides, indent=4)}\n\n\n"
        "def get_config():\n"
        "    spec = importlib.util.spec_from_file_location(\"sweep_base_recipe\", RECIPE)\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "    config = module.get_config()\n"
        "    for dotted, value in OVERRIDES.items():\n"
        "        node = config\n"
        "        *parents, leaf = dotted.split(\".\")\n"
        "        for part in parents:\n"
        "            node = node[part]\n"
        "        node[leaf] = value\n"
        "    return config\n")
    (workdir / "best_command.txt").write_text(
        f"{command}\n# or: python -m jaxft.main --config {_quote(plan['recipe'])} --workdir "
        f"{_quote(str(workdir / 'best'))} {flags}\n")


# ---------------------------------------------------------------------------------------------- command

def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(
        prog="python -m jaxft.main sweep",
        description="Grid / random hyper-parameter search; each trial is a train run in WORKDIR/trial-NNN. "
                    "Extra --config.KEY=VALUE flags apply to every trial. Re-run the same command to resume.")
    parser.add_argument("--config", required=True, help="recipe, e.g. configs/ner.py")
    parser.add_argument("--space", required=True, help="Python file with space() (see jaxft/sweep_space.py)")
    parser.add_argument("--workdir", default=None, help="sweep folder (default: runs/sweep-<recipe>)")
    parser.add_argument("--parallel", type=int, default=1, help="trials running at once (default 1)")
    parser.add_argument("--trials", type=int, default=None,
                        help="grid: the first N combinations (default all); random: N trials (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random dimensions' draws")
    parser.add_argument("--metric", default="", help="score read from results.json, e.g. dev.f1 "
                                                     "(default: the task's main metric on dev)")
    parser.add_argument("--mode", choices=("auto", "max", "min"), default="auto",
                        help="auto: min for perplexity/loss/mse/rmse/mae, else max")
    parser.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    args, extra = parser.parse_known_args(argv)
    shared = {}
    for item in extra:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(f"unrecognised argument {item!r} (trial settings are --config.KEY=VALUE)")
        key, _, value = item[len("--config."):].partition("=")
        shared[key] = value
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    return args, shared


def sweep_command(argv: list[str]) -> int:
    args, shared_text = parse_args(argv)
    try:
        load_recipe(args.config)  # the recipe must load before any trial starts
        shared = {k: coerce(k, v) for k, v in shared_text.items()}
        plan = make_plan(args, shared)
        workdir = Path(args.workdir or os.path.join("runs", f"sweep-{Path(args.config).stem}"))
        workdir.mkdir(parents=True, exist_ok=True)
        lock = _lock(workdir)
        plan = reconcile(workdir, plan)
    except (SweepError, sweep_space.SpaceError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    trials = [Trial(i, overrides) for i, overrides in enumerate(plan["trials"])]
    states = {t.index: trial_state(workdir, t) for t in trials}
    queue = [t for t in trials if states[t.index] == "pending" or (args.retry_failed and states[t.index] == "failed")]
    log(f"{len(trials)} trials in {workdir}: {sum(s == 'finished' for s in states.values())} finished, "
        f"{sum(s == 'failed' for s in states.values())} failed, {len(queue)} to run "
        f"(at most {args.parallel} at once)")
    runner = Runner(workdir, plan, args.parallel)
    report = lambda: write_reports(workdir, plan, args.metric, args.mode)  # noqa: E731
    try:
        runner.run(queue, report)
    finally:
        best = report()
        lock.close()
    print((workdir / "results.md").read_text())
    if best is None:
        log("no trial finished")
        return 1
    log(f"best: {best['trial']} ({best['score']:.4f}); rerun it with: {(workdir / 'best_command.txt').read_text().splitlines()[0]}")
    return 0


def _lock(workdir: Path):
    handle = open(workdir / LOCK_FILE, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SweepError(f"another sweep is running in {workdir} (it holds {workdir / LOCK_FILE})") from None
    return handle


main = sweep_command
