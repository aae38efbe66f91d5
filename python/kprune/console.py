"""What the command line shows: option help with defaults, status lines, quiet mode, errors in the
words of the command line (``--num-tokens``, not ``num_tokens``) and the ``info`` table."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings

_quiet = False


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default: ``(required)``, ``(default: off)`` for a switch, or
    ``(default: X)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or not action.option_strings or "(default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None:
            return text if "(" in text else f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


def set_quiet(quiet: bool, verbose: bool = False) -> None:
    """Logging level of the run: kprune's steps with ``verbose``, warnings by default, only errors when
    ``quiet`` (which also silences progress bars and transformers' own bars and warnings)."""
    global _quiet
    _quiet = quiet
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if not quiet:
        return
    warnings.simplefilter("ignore")
    os.environ.update(TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1",
                      TRANSFORMERS_NO_ADVISORY_WARNINGS="1", TOKENIZERS_PARALLELISM="false")
    if "transformers" in sys.modules:  # already loaded (the CLI called in-process): tell it directly
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def status(message: str) -> None:
    """One line on stderr about what the run does now (nothing when quiet)."""
    if not _quiet:
        print(f"kprune: {message}", file=sys.stderr, flush=True)


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """API argument name -> command-line flag, for every option of ``parser`` and its sub-commands."""
    names: dict[str, str] = {}
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings and action.dest not in ("help",):
                names.setdefault(action.dest, max(action.option_strings, key=len))
    return names


def cli_words(message: str, names: dict[str, str]) -> str:
    """``message`` with the API's argument names as command-line flags: ``num_tokens=0`` and
    ``num_tokens`` become ``--num-tokens 0`` and ``--num-tokens`` (names with an underscore, and any
    name written ``name=value``)."""
    def flag(match: re.Match) -> str:
        name, equals, switch = match.group(1), match.group(2), match.group(3)
        if name not in names or (not equals and "_" not in name):
            return match.group(0)
        if switch:   # overwrite=True: a switch, just --overwrite
            return names[name]
        return names[name] + (" " if equals else "")
    return re.sub(r"(?<![\w.-])([a-z][a-z0-9_]*)\b(=?)(True\b)?", flag, message)


def info_table(info: dict) -> str:
    """``kprune info``'s readable form of the dictionary ``--json`` prints."""
    heads, neurons = info["heads_kept"], info["neurons_kept"]
    lines = [
        f"model            {info['model']}",
        f"architecture     {info['architecture']} ({info['class']})",
        f"layers           {info['layers']}, hidden size {info['hidden_size']}, "
        f"{info['heads_per_layer']} heads and {info['neurons_per_layer']} FFN neurons per layer unpruned",
        f"parameters       {info['params']:,}",
        f"heads kept       {sum(heads)} of {info['heads_per_layer'] * info['layers']}",
        f"neurons kept     {sum(neurons)} of {info['neurons_per_layer'] * info['layers']}",
    ]
    pruned_at = info.get("pruned_seq_len")
    if pruned_at is not None:
        lines.append(f"FLOPs reduction  {info['flops_reduction_pruned']:.1%} at {pruned_at:.1f} tokens "
                     f"(the pruning sample's mean length, report.json)")
        lines.append(f"                 {info['flops_reduction']:.1%} at {info['seq_len']:g} tokens (--seq-len)")
    else:
        lines.append(f"FLOPs reduction  {info['flops_reduction']:.1%} at {info['seq_len']:g} tokens (--seq-len)")
    lines.append(f"encoder GFLOPs   {info['encoder_flops'] / 1e9:.3f} of {info['encoder_flops_unpruned'] / 1e9:.3f} "
                 f"per sequence of {info['seq_len']:g} tokens")
    lines.append("")
    lines.append("layer  heads  neurons")
    for layer, (h, n) in enumerate(zip(heads, neurons)):
        lines.append(f"{layer:>5}  {h:>5}  {n:>7}")
    return "\n".join(lines)


class _CliWordsFilter(logging.Filter):
    def __init__(self, names: dict[str, str]):
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = cli_words(record.getMessage(), self.names), None
        return True


def log_in_cli_words(names: dict[str, str]) -> None:
    """Log messages name command-line flags where the library names its arguments."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_CliWordsFilter(names))
