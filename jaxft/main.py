"""Command line: train (default), and the subcommands in SUBCOMMANDS (predict, ...). Argument parsing only:
the work is in jaxft.tasks.run (training) and the modules the subcommands name; nothing imports this module.

    python -m jaxft.main --config configs/ner.py [--workdir DIR] [--config.optim.learning_rate=3e-5 ...]
    python -m jaxft.main predict --model DIR/export [--input sentences.txt]

Re-running a train command on the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

# subcommand -> "module:function" taking the arguments after the subcommand and returning an exit status.
# Without a subcommand (or with "train") the arguments are a training run's flags.
SUBCOMMANDS = {
    "predict": "jaxft.main:predict_command",
    "explain": "jaxft.explain:main",
    "sweep": "jaxft.sweep:sweep_command",
    "serve": "jaxft.serve.app:serve_command",
    "quantize": "jaxft.quantize:quantize_command",
}


def main(argv: list[str] | None = None, *, hooks=None) -> int:
    """hooks: a jaxft.train.hooks.Hooks for the training run (tests install fault injection this way)."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and argv[1] == "train":
        argv = argv[:1] + argv[2:]
    if len(argv) > 1 and argv[1] in SUBCOMMANDS:
        module, function = SUBCOMMANDS[argv[1]].split(":")
        return getattr(importlib.import_module(module), function)(argv[2:])
    return train_command(argv, hooks)


def cli() -> None:
    sys.exit(main())


# ---------------------------------------------------------------------------------------------- train

def train_command(argv: list[str], hooks=None) -> int:
    from absl import flags  # absl and ml_collections only where flags are parsed
    from ml_collections import config_flags  # (ditto)

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
    return run_with_clear_errors(config_flag.value, workdir_flag.value or os.path.join("runs", recipe), hooks)


def _one_line(err: Exception) -> str:
    text = str(err)
    if len(text) > 1 and text[0] == text[-1] == "'":  # KeyError's repr quoting
        text = text[1:-1]
    return " ".join(text.replace("\\n", " ").replace("\\'", "'").split())


def run_with_clear_errors(config, workdir: str, hooks=None) -> int:
    """A training run, turning the errors a user can fix into one line on stderr and exit status 2."""
    from jaxft.errors import USER_ERRORS  # jax and the models load only once a command needs them
    from jaxft.tasks.run import run  # (ditto)
    from jaxft.train.errors import EXIT_TRAINING_ERROR, TrainingError  # (ditto)
    from jaxft.train.hooks import NO_HOOKS  # (ditto)

    try:
        run(config, workdir, hooks=hooks or NO_HOOKS)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:  # non-finite loss, a checkpoint that could not be written (see train.errors)
        logging.getLogger("jaxft.train").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_TRAINING_ERROR
    return 0


# ---------------------------------------------------------------------------------------------- predict

def predict_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxft.main predict",
        description="Predict with an exported model; prints one JSON object per line. NER: entities of each "
                    "input line. Classification: label and probabilities of each line (pair models: "
                    "'text<TAB>pair'; .json/.jsonl input: objects with the training text fields). QA: answer "
                    "spans with scores for a SQuAD .json / .jsonl of {question, context} (stdin: JSON lines). "
                    "Masked LM: the likeliest tokens at each mask token of each line.")
    parser.add_argument("--model", required=True, action="append",
                        help="exported model folder (e.g. runs/ner/export); repeat it for an ensemble "
                             "(probabilities averaged; same task, labels and tokenizer)")
    parser.add_argument("--input", default=None, help="input file (default: stdin)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="default: the export's training max_length (jaxft_task.json), else the task's default")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--format", choices=("text", "conll"), default="text",
                        help="NER input: text (one sentence a line, split on whitespace) or conll (tokens in the "
                             "first column, blank lines between sentences)")
    args = parser.parse_args(argv)

    if args.input not in (None, "-") and not os.path.isfile(args.input):
        print(f"error: --input: file not found: {args.input}", file=sys.stderr)
        return 2
    from jaxft.errors import USER_ERRORS  # jax and the models load only once a command needs them
    from jaxft.predict import run_predict  # (ditto)

    try:
        run_predict(args.model, args.input, max_length=args.max_length, batch_size=args.batch_size,
                    input_format=args.format)
    except (*USER_ERRORS, UnicodeDecodeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    cli()
