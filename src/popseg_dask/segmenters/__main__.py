"""``python -m popseg_dask.segmenters README.md``: regenerate the README's protocol table in place.

The table sits between ``<!-- protocol:start -->`` and ``<!-- protocol:end -->``; it is rendered
from :class:`~popseg_dask.segmenters.Segmenter` by :func:`protocol_markdown`.
"""

import sys
from pathlib import Path

from . import protocol_markdown

START, END = "<!-- protocol:start -->", "<!-- protocol:end -->"


def main(path: str) -> int:
    text = Path(path).read_text()
    if START not in text or END not in text:
        print(f"{path}: no {START} ... {END} block to fill", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    Path(path).write_text(f"{head}{START}\n{protocol_markdown()}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
