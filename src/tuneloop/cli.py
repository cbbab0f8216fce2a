"""The `tuneloop` command line: one literal table from command to function.

    tuneloop run examples/airline-sentiment/config.yaml --train.lr 1e-4
    tuneloop chat runs/airline-sentiment --prompt "@united my bag is lost again"

Errors a user can fix print one line and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from tuneloop.errors import UserError


def cmd_run(args: list) -> int:
    """Run the main job from a YAML config: data -> base eval -> train -> tuned eval -> report."""
    p = argparse.ArgumentParser(prog="tuneloop run", description=cmd_run.__doc__,
                                epilog="Any config key can be overridden: --section.key value "
                                       "(e.g. --train.lr 1e-4 --data.train_size 800).")
    p.add_argument("config", help="YAML run config")
    ns, overrides = p.parse_known_args(args)
    from tuneloop.config import load_config
    from tuneloop.run import run

    run(load_config(ns.config, overrides))
    return 0


def cmd_chat(args: list) -> int:
    """Chat with a run's tuned model (interactive, or one answer with --prompt)."""
    p = argparse.ArgumentParser(prog="tuneloop chat", description=cmd_chat.__doc__)
    p.add_argument("model", help="run folder (uses its model/) or a model spec")
    p.add_argument("--prompt", help="answer this one prompt and exit")
    p.add_argument("--system", help="system message (default: the run's data.instruction, if any)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    ns = p.parse_args(args)
    from tuneloop.chat import chat

    return chat(ns.model, ns.prompt, ns.system, ns.max_new_tokens)


def cmd_config(args: list) -> int:
    """Print the config reference (every key, its default and meaning) or a run's resolved config."""
    p = argparse.ArgumentParser(prog="tuneloop config", description=cmd_config.__doc__)
    p.add_argument("config", nargs="?", help="YAML config to resolve (with overrides) and print")
    ns, overrides = p.parse_known_args(args)
    import yaml

    from tuneloop.config import load_config, reference, to_dict

    if ns.config:
        print(yaml.safe_dump(to_dict(load_config(ns.config, overrides)), sort_keys=False), end="")
    else:
        for key, typ, default, text in reference():
            print(f"{key:28s} {typ:6s} {default!r:32s} {text}")
    return 0


def cmd_data(args: list) -> int:
    """Data stage: `inspect FILE`, `prepare CONFIG|FILE --out DIR`, `from-feedback DB --out FILE`."""
    if args and args[0] == "from-feedback":  # served exchanges back into training data
        from tuneloop.serve.feedback import cmd_from_feedback

        return cmd_from_feedback(args[1:])
    from tuneloop.data.cli import cmd_data as data

    return data(args)


def cmd_serve(args: list) -> int:
    """Serve a run or model behind an OpenAI-compatible API (chat, completions, embeddings, adapters)."""
    from tuneloop.serve.cli import cmd_serve as serve

    return serve(args)


def cmd_eval(args: list) -> int:
    """Evaluate a model, run folder or endpoint on a test file (metrics, bias audit, report)."""
    from tuneloop.evaluate.cli import cmd_eval as run_eval

    return run_eval(args)


def cmd_compare(args: list) -> int:
    """Compare two models on a test file with CIs and a regression gate (exit 1 when the gate fails)."""
    from tuneloop.evaluate.cli import cmd_compare as run_compare

    return run_compare(args)


def cmd_export(args: list) -> int:
    """Export a run as merged safetensors or GGUF, with a parity check against the trained model."""
    from tuneloop.export.cli import cmd_export as run_export

    return run_export(args)


COMMANDS = {
    "run": cmd_run,
    "data": cmd_data,
    "eval": cmd_eval,
    "compare": cmd_compare,
    "chat": cmd_chat,
    "serve": cmd_serve,
    "export": cmd_export,
    "config": cmd_config,
}


def _usage() -> str:
    lines = ["usage: tuneloop [--debug] COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:8s} {fn.__doc__.splitlines()[0]}" for name, fn in COMMANDS.items()]
    lines += ["", "`tuneloop COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tuneloop: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' per-load "Loading weights" bars are noise next to our own progress bars
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        return COMMANDS[name](rest)
    except UserError as e:
        if debug:
            raise
        print(f"tuneloop: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuneloop: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an internal bug: keep it one line unless --debug
        if debug:
            raise
        print(f"tuneloop: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
