"""The writers both benchmark drivers share: atomic JSON files and generated markdown blocks.

Both write files that other sessions read back (a run directory, ``docs/results.md``), so a file
that exists is complete, and a block a driver regenerates leaves the rest of the file untouched.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any


def write_json(path: pathlib.Path, obj: Any) -> None:
    """Write ``obj`` to ``path`` atomically (a temporary file, then a rename): a file that exists
    is complete. Both benchmarks write their JSON through it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def write_block(path: pathlib.Path, section: str, tag: str, body: str, intro: str = "") -> None:
    """Put ``body`` between ``<!-- {section}:{tag}:begin -->`` and ``...:end -->`` in ``path``,
    under the heading ``## {Section}`` (added at the end, with ``intro``, if missing). Only that
    block changes; the rest of the file is kept byte for byte."""
    begin, end = f"<!-- {section}:{tag}:begin -->", f"<!-- {section}:{tag}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        heading = f"## {section[0].upper()}{section[1:].replace('-', ' ')}"
        if heading not in text:
            text = text.rstrip() + f"\n\n{heading}\n\n" + (f"{intro.rstrip()}\n\n" if intro else "")
        # insert at the end of this section (before the next "## " heading, if any)
        start = text.index(heading) + len(heading)
        nxt = text.find("\n## ", start)
        if nxt == -1:
            text = text.rstrip() + "\n\n" + block + "\n"
        else:
            text = text[:nxt].rstrip() + "\n\n" + block + "\n" + text[nxt:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
