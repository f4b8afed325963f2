"""The one exception type a user sees as a one-line message (the CLI prints it and exits non-zero)."""

from pathlib import Path


class VSLMError(Exception):
    """A problem with the user's input or environment: a bad config, a missing file, a busy run folder.

    The message is a complete sentence naming the problem; the CLI prints it without a traceback.
    """

    exit_code = 1
    label = "error: "  # how the CLI introduces the message ("vslm: error: ...")


class ConfigError(VSLMError):
    """A config that does not validate. The CLI exits with code 2."""

    exit_code = 2


class ResumeRefused(ConfigError):
    """A resume whose config would change what the run trains (its values, or fewer steps than it has done).
    The CLI says where the values came from when a named config brought them."""


class UsageError(VSLMError):
    """A command-line argument with a value out of range. The CLI exits with code 2, as for argparse's errors."""

    exit_code = 2


def repeated(items: list) -> list:
    """The items that appear more than once, sorted, each once: what a "listed twice" refusal names."""
    return sorted({x for x in items if items.count(x) > 1})


def did_you_mean(word: str, choices, prefix: str = "") -> str:
    """' (did you mean train.steps?)' for the names among `choices` close to `word` (difflib), else ''.
    `prefix` is put before each name suggested (a field's section, 'train.')."""
    import difflib

    close = difflib.get_close_matches(word, [str(c) for c in choices], n=3, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(prefix + c for c in close)}?)"


def refuse_file_in_the_way(folder: Path, flag: str = "--out") -> None:
    """A folder to be made or used that is a file, or lies under one (the nearest of its parents that exists),
    refused in one line naming the flag (or words) that gave it."""
    folder = Path(folder)
    taken = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if taken is not None and not taken.is_dir():
        raise UsageError(f"{flag} {folder}{'' if taken == folder else f': {taken}'} is a file, not a folder")
