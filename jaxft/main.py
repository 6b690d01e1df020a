"""Command line: train (default), and the subcommands in SUBCOMMANDS (evaluate, predict, ...). Argument parsing
only: the work is in jaxft.tasks.run (training), jaxft.api, jaxft.hub and the modules the subcommands name;
nothing imports this module.

    python -m jaxft.main --config configs/ner.py [--workdir DIR] [--config.optim.learning_rate=3e-5 ...]
    python -m jaxft.main --config configs/ner.py --help     # the resolved config, each key with its meaning
    python -m jaxft.main evaluate --model DIR/export --data test.conll
    python -m jaxft.main predict --model DIR/export [--input sentences.txt]
    python -m jaxft.main --help                             # the subcommands

Re-running a train command on the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

# subcommand -> "module:function" taking the arguments after the subcommand and returning an exit status.
# Without a subcommand (or with "train") the arguments are a training run's flags.
SUBCOMMANDS = {
    "evaluate": "jaxft.main:evaluate_command",
    "predict": "jaxft.main:predict_command",
    "serve": "jaxft.serve.app:serve_command",
    "explain": "jaxft.explain:main",
    "quantize": "jaxft.quantize:quantize_command",
    "sweep": "jaxft.sweep:sweep_command",
    "push": "jaxft.main:push_command",
    "config": "jaxft.main:config_command",
}
SUMMARIES = {
    "train": "(the default) train, evaluate and export a recipe; re-running on its workdir resumes",
    "evaluate": "score an exported model on a data file, save_to_disk folder or hub dataset",
    "predict": "predict with an exported model: one JSON object per input line",
    "serve": "serve an exported model over HTTP (JSON API, dynamic batching, metrics)",
    "explain": "attribute a prediction to the input words (integrated gradients, gradient x input)",
    "quantize": "int8 weights (and magnitude pruning) of an export, for inference",
    "sweep": "hyper-parameter sweep over a recipe (grid or random)",
    "push": "upload an exported model folder to the Hugging Face Hub",
    "config": "print a recipe's resolved config, each key with its meaning",
}
HELP = ("-h", "--help")
TRAIN_USAGE = """usage: python -m jaxft.main [train] --config FILE [--workdir DIR] [--config.KEY=VALUE ...]

Train, evaluate on dev, test the best checkpoint and export it (a Hugging Face folder with a model card).

  --config FILE        a recipe: configs/ner.py, configs/ner_lora.py, configs/sentiment.py, configs/qa.py,
                       configs/mlm.py, or your own file with get_config()
  --workdir DIR        the run's folder (default runs/<recipe name>); re-running on it resumes
  --config.KEY=VALUE   set any config key, e.g. --config.optim.learning_rate=3e-5 --config.train.num_epochs=3
  --help               with --config: the resolved config, each key with its meaning and allowed values
"""


def main(argv: list[str] | None = None, *, hooks=None) -> int:
    """hooks: a jaxft.train.hooks.Hooks for the training run (tests install fault injection this way)."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and argv[1] == "help":  # `help` and `help COMMAND`
        argv = argv[:1] + argv[2:3] + ["--help"]
    if len(argv) > 1 and argv[1] == "train":
        return train_command(argv[:1] + argv[2:], hooks)
    if len(argv) > 1 and argv[1] in SUBCOMMANDS:
        module, function = SUBCOMMANDS[argv[1]].split(":")
        return getattr(importlib.import_module(module), function)(argv[2:])
    if len(argv) == 1 or (any(a in HELP for a in argv[1:]) and not _config_given(argv)):
        print(overview(), file=sys.stdout if len(argv) > 1 else sys.stderr)
        return 0 if len(argv) > 1 else 2
    return train_command(argv, hooks)


def overview() -> str:
    width = max(map(len, SUMMARIES))
    commands = "\n".join(f"  {name:<{width}}  {summary}" for name, summary in SUMMARIES.items())
    return (f"usage: python -m jaxft.main [COMMAND] [OPTIONS]\n\nFine-tune BERT-family encoders in JAX/Flax NNX; "
            f"models go in and out as Hugging Face folders.\n\ncommands:\n{commands}\n\n"
            "`python -m jaxft.main COMMAND --help` lists a command's options; `python -m jaxft.main --config FILE "
            "--help` prints the recipe's resolved config with each key's meaning.")


def cli() -> None:
    sys.exit(main())


# ---------------------------------------------------------------------------------------------- train

def _config_given(argv: list[str]) -> bool:
    return _config_file(argv) is not None


def _config_file(argv: list[str]) -> str | None:
    """The --config value (the recipe file, without ml_collections' ":arguments" suffix)."""
    for index, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":")[0]
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1].split(":")[0]
    return None


class FlagError(ValueError):
    """Train flags that cannot work: one line, exit status 2."""


def parse_train_flags(argv: list[str]):
    """(config with its --config.KEY overrides, workdir or None, recipe file) from the train flags; FlagError
    when they are wrong (an unknown key names the nearest known one, as in Python)."""
    from absl import flags  # absl and ml_collections only where flags are parsed
    from ml_collections import config_flags  # (ditto)

    from jaxft.config import keys, suggest  # (start-up cost: the schema only when flags are parsed)

    known = dict(keys())
    for arg in argv[1:]:
        if arg.startswith("--config.") or arg.startswith("--noconfig."):
            name = arg.split("=", 1)[0].split(".", 1)[1]
            if name not in known:
                raise FlagError(f"unknown config key {name!r}" + suggest(name, known))
    if not _config_given(argv):
        raise FlagError("--config is required (e.g. --config configs/ner.py; --help lists the options)")
    flag_values = flags.FlagValues()  # a fresh set each call: main() can run more than once in a process
    config_flag = config_flags.DEFINE_config_file("config", None, "recipe file, e.g. configs/ner.py",
                                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
    workdir_flag = flags.DEFINE_string("workdir", None, "run folder (default: runs/<recipe name>)",
                                       flag_values=flag_values)
    config_file = _config_file(argv)
    if not os.path.isfile(config_file):
        raise FlagError(f"--config: file not found: {config_file}")
    try:
        flag_values(argv)
    except flags.Error as err:
        raise FlagError(str(err)) from None
    except (AttributeError, KeyError, TypeError, ValueError) as err:  # a value the key's type refuses
        raise FlagError(f"bad --config override: {_one_line(err)}") from None
    return config_flag.value, workdir_flag.value, config_file


def train_command(argv: list[str], hooks=None) -> int:
    help_asked = any(a in HELP for a in argv[1:])
    argv = [a for a in argv if a not in HELP]
    if help_asked and not _config_given(argv):
        print(TRAIN_USAGE)
        return 0
    try:
        config, workdir, recipe_file = parse_train_flags(argv)
    except FlagError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if help_asked:
        from jaxft.config import describe  # (start-up cost: the schema only when asked)

        overrides = [a for a in argv if a.startswith("--config.")]
        print(describe(config, f"{recipe_file}" + (f" with {' '.join(overrides)}" if overrides else "")), end="")
        return 0
    return run_with_clear_errors(config, workdir or os.path.join("runs", Path(recipe_file).stem), hooks)


def config_command(argv: list[str]) -> int:
    """`config --config FILE [--config.KEY=VALUE ...]`: what `--config FILE --help` prints."""
    if any(a in HELP for a in argv) and not _config_given(["config", *argv]):
        print("usage: python -m jaxft.main config --config FILE [--config.KEY=VALUE ...]\n\n" + SUMMARIES["config"])
        return 0
    return train_command(["config", *argv, "--help"])


def _one_line(err: Exception) -> str:
    text = str(err)
    if len(text) > 1 and text[0] == text[-1] == "'":  # KeyError's repr quoting
        text = text[1:-1]
    return " ".join(text.replace("\\n", " ").replace("\\'", "'").split())


def run_with_clear_errors(config, workdir: str, hooks=None) -> int:
    """A training run, turning the errors a user can fix into one line on stderr and exit status 2."""
    from jaxft.errors import USER_ERRORS  # jax and the models load only once a command needs them
    from jaxft.hub import HubError  # (ditto)
    from jaxft.tasks.run import run  # (ditto)
    from jaxft.train.errors import EXIT_TRAINING_ERROR, TrainingError  # (ditto)
    from jaxft.train.hooks import NO_HOOKS  # (ditto)

    try:
        run(config, workdir, hooks=hooks or NO_HOOKS)
    except (*USER_ERRORS, HubError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:  # non-finite loss, a checkpoint that could not be written (see train.errors)
        logging.getLogger("jaxft.train").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_TRAINING_ERROR
    return 0


# ---------------------------------------------------------------------------------------------- evaluate

def evaluate_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxft.main evaluate",
        description="Score an exported model on data, as its training run scored the test split (the same "
                    "metrics, batching and tuned thresholds); prints the metrics as JSON.")
    parser.add_argument("--model", required=True, help="exported model folder (e.g. runs/ner/export) or hub id")
    parser.add_argument("--data", required=True,
                        help="a data file of the task's formats, a save_to_disk folder, or a hub dataset id")
    parser.add_argument("--split", default="test", help="split of a hub dataset or saved DatasetDict (default test)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="rows per prediction batch (default: as in training, 2 x train.batch_size)")
    parser.add_argument("--config", default=None,
                        help="recipe file whose data settings (columns, tag scheme) to read the data with; default: "
                             "the training run's config.json next to the export, else the task's defaults")
    parser.add_argument("--output", default=None, help="also write the metrics JSON to this file")
    args = parser.parse_args(argv)

    from jaxft.api import evaluate  # (start-up cost: jax loads only once a command needs it)
    from jaxft.config import load_recipe  # (ditto)
    from jaxft.errors import USER_ERRORS  # (ditto)
    from jaxft.evaluate.reports import print_results_table  # (ditto)
    from jaxft.files import write_json  # (ditto)

    try:
        config = load_recipe(args.config) if args.config else None
        metrics = evaluate(args.model, args.data, split=args.split, batch_size=args.batch_size, config=config)
    except (*USER_ERRORS, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "per_type" in metrics:
        print_results_table({args.split: metrics}, console=_stderr_console())
    if args.output:
        write_json(args.output, metrics)
    print(json.dumps(metrics, indent=2, sort_keys=True, default=float))
    return 0


def _stderr_console():
    from rich.console import Console  # (start-up cost: only for the results table)

    return Console(stderr=True)


# ---------------------------------------------------------------------------------------------- push

def push_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxft.main push",
        description="Upload an exported model folder (export/, export_adapter/) to a Hugging Face Hub model repo "
                    "in one commit, with huggingface_hub; the token comes from HF_TOKEN or `hf auth login`.")
    parser.add_argument("--model", required=True, help="the folder to upload (e.g. runs/ner/export)")
    parser.add_argument("--repo-id", required=True, help="the model repo, 'user/name' (created if needed)")
    parser.add_argument("--path-in-repo", default="", help="folder inside the repo (default: its root)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    parser.add_argument("--commit-message", default=None)
    args = parser.parse_args(argv)

    from jaxft.hub import HubError, push  # (start-up cost: huggingface_hub only when uploading)

    try:
        url = push({args.path_in_repo: args.model}, args.repo_id, private=args.private or None,
                   revision=args.revision, commit_message=args.commit_message)
    except HubError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(url)
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
