"""``python -m flywheel.training._entry module:function [args...]``: run a job's entry function.

torchrun starts this in every worker when the spec's entrypoint is ``module:function``; the
function sees the job's ``args`` in ``sys.argv[1:]``. An ``int`` it returns is the exit code.
"""

from __future__ import annotations

import sys

from flywheel._plugins import load_target


def main() -> int:
    if len(sys.argv) < 2 or ":" not in sys.argv[1]:
        sys.stderr.write("usage: python -m flywheel.training._entry module:function [args...]\n")
        return 2
    target = sys.argv[1]
    sys.argv = [target, *sys.argv[2:]]
    function = load_target(target)
    result = function()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
