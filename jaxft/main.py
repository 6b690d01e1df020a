"""Command line: train (default), and the subcommands in SUBCOMMANDS (predict, ...).

    python -m jaxft.main --config configs/ner.py [--workdir DIR] [--config.optim.learning_rate=3e-5 ...]
    python -m jaxft.main predict --model DIR/export [--input sentences.txt]

Re-running a train command on the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

# subcommand -> "module:function" taking the arguments after the subcommand and returning an exit status.
# Without a subcommand (or with "train") the arguments are a training run's flags.
SUBCOMMANDS = {
    "predict": "jaxft.main:_predict_command",
    "explain": "jaxft.explain:main",
    "sweep": "jaxft.sweep:sweep_command",
    "serve": "jaxft.serve.app:serve_command",
    "quantize": "jaxft.quantize:quantize_command",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and argv[1] == "train":
        argv = argv[:1] + argv[2:]
    if len(argv) > 1 and argv[1] in SUBCOMMANDS:
        import importlib

        module, function = SUBCOMMANDS[argv[1]].split(":")
        return getattr(importlib.import_module(module), function)(argv[2:])
    return _train_command(argv)


def cli() -> None:
    sys.exit(main())


# ---------------------------------------------------------------------------------------------- train

def _train_command(argv: list[str]) -> int:
    from absl import flags
    from ml_collections import config_flags

    config_flag = config_flags.DEFINE_config_file("config", None, "recipe file, e.g. configs/ner.py",
                                                  lock_config=True)
    workdir_flag = flags.DEFINE_string("workdir", None, "run folder (default: runs/<recipe name>)")
    try:
        flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (AttributeError, KeyError, TypeError, ValueError) as err:  # an override of a key that does not exist
        print(f"error: bad --config override: {_one_line(err)}", file=sys.stderr)
        return 2
    if not flags.FLAGS["config"].present:
        print("error: --config is required (e.g. --config configs/ner.py)", file=sys.stderr)
        return 2
    config_file = flags.FLAGS["config"].config_filename.split(":")[0]
    if not os.path.isfile(config_file):
        print(f"error: --config: file not found: {config_file}", file=sys.stderr)
        return 2
    recipe = Path(flags.FLAGS["config"].config_filename).stem
    return run_with_clear_errors(config_flag.value, workdir_flag.value or os.path.join("runs", recipe))


def _one_line(err: Exception) -> str:
    text = str(err)
    if len(text) > 1 and text[0] == text[-1] == "'":  # KeyError's repr quoting
        text = text[1:-1]
    return " ".join(text.replace("\\n", " ").replace("\\'", "'").split())


def user_errors() -> tuple[type[Exception], ...]:
    """Errors a user can fix (config, data, model folder): commands print them as one line and exit 2."""
    from jaxft.config import ConfigError
    from jaxft.data.errors import DataError
    from jaxft.models import ModelLoadError, UnsupportedModelError

    return ConfigError, DataError, ModelLoadError, UnsupportedModelError


def run_with_clear_errors(config, workdir: str) -> int:
    """run(), turning the errors a user can fix into one line on stderr and exit status 2."""
    from jaxft.train.errors import EXIT_TRAINING_ERROR, TrainingError

    try:
        run(config, workdir)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:  # non-finite loss, a checkpoint that could not be written (see train.errors)
        logging.getLogger("jaxft.train").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_TRAINING_ERROR
    return 0


def run(config, workdir: str | Path) -> dict:
    """Train, evaluate and export one recipe into `workdir`; returns the results dict."""
    from jaxft.config import validate, validate_workdir

    validate(config)
    validate_workdir(config, workdir)
    _initialize_distributed(config.mesh)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _setup_logging(workdir)
    _enable_compilation_cache()
    return task_runner(config.task)(config, workdir)


# config.task -> "module:function" that trains, evaluates and exports one run of that task.
TASK_RUNNERS = {
    "token-classification": "jaxft.tasks.ner:train_and_evaluate",
    "sequence-classification": "jaxft.tasks.classification:train_and_evaluate",
    "question-answering": "jaxft.tasks.qa:train_and_evaluate",
    "masked-lm": "jaxft.tasks.mlm:train_and_evaluate",
}


def task_runner(task: str):
    import importlib

    from jaxft.config import ConfigError

    if task not in TASK_RUNNERS:
        raise ConfigError(f"config key 'task' must be one of {', '.join(TASK_RUNNERS)}; got {task!r}")
    module, function = TASK_RUNNERS[task].split(":")
    return getattr(importlib.import_module(module), function)


def _initialize_distributed(mesh_config) -> None:
    """Multi-host: every process runs the same command; JAX connects them before any device is used."""
    if not (mesh_config.distributed or os.environ.get("JAXFT_DISTRIBUTED") == "1"):
        return
    import jax

    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo
    jax.distributed.initialize(
        coordinator_address=mesh_config.coordinator_address or None,
        num_processes=mesh_config.num_processes or None,
        process_id=None if mesh_config.process_id < 0 else mesh_config.process_id)


def _setup_logging(workdir: Path) -> None:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    root = logging.getLogger("jaxft")
    root.setLevel(logging.INFO)
    if not any(getattr(h, "_jaxft", False) for h in root.handlers):
        import jax

        handlers = [logging.StreamHandler(sys.stderr)]
        if jax.process_index() == 0:
            handlers.append(logging.FileHandler(workdir / "train.log"))
        for handler in handlers:
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
            handler._jaxft = True
            root.addHandler(handler)
    root.propagate = False


def _enable_compilation_cache() -> None:
    """Compiled steps are cached on disk, so a resumed or repeated run skips XLA compilation."""
    import jax

    cache = os.environ.get("JAXFT_COMPILATION_CACHE", os.path.expanduser("~/.cache/jaxft/xla"))
    if cache and cache != "0":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


# ---------------------------------------------------------------------------------------------- predict

def _predict_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxft.main predict",
        description="Predict with an exported model; prints one JSON object per line. NER: entities of each "
                    "input line. Classification: label and probabilities of each line (pair models: "
                    "'text<TAB>pair'; .json/.jsonl input: objects with the training text fields). QA: answer "
                    "spans with scores for a SQuAD .json / .jsonl of {question, context} (stdin: JSON lines).")
    parser.add_argument("--model", required=True, action="append",
                        help="exported model folder (e.g. runs/ner/export); repeat it for an ensemble "
                             "(probabilities averaged; same task, labels and tokenizer)")
    parser.add_argument("--input", default=None, help="input file (default: stdin)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="NER: 128 by default; classification/QA: the training max_length by default")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--format", choices=("text", "conll"), default="text",
                        help="NER input: text (one sentence a line, split on whitespace) or conll (tokens in the "
                             "first column, blank lines between sentences)")
    args = parser.parse_args(argv)

    if args.input not in (None, "-") and not os.path.isfile(args.input):
        print(f"error: --input: file not found: {args.input}", file=sys.stderr)
        return 2
    try:
        models = args.model if len(args.model) > 1 else args.model[0]
        task = exported_task(args.model[0])
        if task == "token-classification":
            from jaxft.predict import run_predict
            run_predict(models, args.input, max_length=args.max_length or 128, batch_size=args.batch_size,
                        input_format=args.format)
        else:
            import importlib
            module = importlib.import_module(PREDICT_RUNNERS[task])
            module.run_predict(models, args.input, max_length=args.max_length, batch_size=args.batch_size)
    except (*user_errors(), UnicodeDecodeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# task of an exported model -> module with run_predict(model_dir, input_path, max_length=, batch_size=)
PREDICT_RUNNERS = {
    "sequence-classification": "jaxft.tasks.classification",
    "question-answering": "jaxft.tasks.qa",
}


def exported_task(model_dir: str) -> str:
    """The task of an exported folder, from its config.json "architectures"; token classification when the
    folder does not say (or is not a local folder), as predict did before it served other tasks."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return "token-classification"
    architectures = json.loads(path.read_text()).get("architectures") or []
    name = architectures[0] if architectures else ""
    if name.endswith("ForSequenceClassification"):
        return "sequence-classification"
    if name.endswith("ForQuestionAnswering"):
        return "question-answering"
    return "token-classification"


if __name__ == "__main__":
    cli()
