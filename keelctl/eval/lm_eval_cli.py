"""The stock lm-eval command line with model `keel` registered and the bundled tasks included:

    python -m keelctl.eval.lm_eval_cli --model keel --model_args path=runs/tiny-keel \\
        --tasks keel_offline,hellaswag --device cpu

Any lm_eval arguments work (run, ls, validate); `--include_path keelctl/eval/tasks` is added
unless one is given. lm-eval 0.4.x never reads the `lm_eval.models` entry point keelctl
declares, so the bare `lm_eval` binary finds `keel` only when a bundled task YAML is passed
by path (docs/eval.md).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    from keelctl.eval.tasks import TASKS_DIR  # also registers model "keel"

    args = list(sys.argv[1:] if argv is None else argv)
    if (
        args
        and not {"-h", "--help"} & set(args)
        and not any(a == "--include_path" or a.startswith("--include_path=") for a in args)
    ):
        args += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm-eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
