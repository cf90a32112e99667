"""Print blocks of README.md that tests run as written.

    python tools/readme_blocks.py settings README.md   # the settings block a new game gets
    python tools/readme_blocks.py shell README.md      # the walkthrough's shell commands

A block is chosen by the HTML comment right before its fence: `<!-- run: settings -->` or
`<!-- run: shell -->` (invisible in the rendered README).
"""

import re
import sys


def blocks(text, kind):
    pattern = re.compile(r"<!-- run: " + re.escape(kind) + r" -->\s*\n```[a-z]*\n(.*?)```", re.S)
    return [match.group(1) for match in pattern.finditer(text)]


def main(argv):
    kind, path = argv
    with open(path, encoding="utf-8") as handle:
        found = blocks(handle.read(), kind)
    if not found:
        sys.exit(f"readme_blocks: no '<!-- run: {kind} -->' block in {path}")
    sys.stdout.write("\n".join(found))


if __name__ == "__main__":
    main(sys.argv[1:])
