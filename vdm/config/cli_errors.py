"""Command-line errors as one line: absl flag parsing and --config file loading for every entry point.

A misspelt --config.K=V, an unknown flag or a config file that fails to load is reported as one
line on stderr ("Did you mean" kept, the offending flag named) with exit status 2, nothing written.
"""

from __future__ import annotations

import os
import re
import sys

from absl import flags


def one_line(error: BaseException, argv: list[str] = ()) -> str:
    """A flag or config-file error as one line: the innermost message, the offending flag named, 'Did you mean' kept."""
    text = str(error)
    if "Error whilst parsing config file" in text or "Traceback" in text:  # a config file's own error
        lines = [ln.strip() for ln in text.splitlines() if re.match(r"\s*\w*(Error|Exception)\b.*:", ln)]
        text = lines[-1] if lines else text
    if "Failed loading config file" in text:
        path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "?")
        configs = sorted(f for f in os.listdir("configs") if f.endswith(".py")) if os.path.isdir("configs") else []
        return (
            f"--config={path}: no such config file"
            + (f" (configs/ holds {', '.join(configs)})" if configs else "")
            + "."
        )
    text = text.strip().replace("\\'", "'").replace("\\n", "\n")
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    text = " ".join(text.split())
    bad = re.findall(r"'(\w+)'", text)
    flag = next(
        (
            a.split("=")[0]
            for a in argv
            if a.startswith("--config.") and bad and a.split("=")[0].split(".")[-1] == bad[0]
        ),
        None,
    )
    if flag and "Did you mean" in text:
        return f"{flag}: the config has no key {bad[0]!r}; " + text[text.index("Did you mean") :]
    if "Unknown command line flag 'config." in text:
        text += " (--config.K=V overrides need --config=FILE; the workdir's config.json is used without one)"
    return text


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing (and loading the --config file) with every error as one line on stderr, exit status 2.

    For app.run(main, flags_parser=parse_flags) in every entry point with a --config flag.
    """
    try:
        rest = flags.FLAGS(argv)
        if flags.FLAGS["config"].present:
            list(flags.FLAGS["config"].value.keys())  # the file is loaded lazily: its errors belong here
        return rest
    except Exception as e:  # absl.flags.Error, or anything a config file raises
        print(f"error: {one_line(e, argv)}", file=sys.stderr)
        sys.exit(2)
