"""Print blocks of README.md that tests run as written.

    python tools/readme_blocks.py settings README.md   # the settings block a new game gets
    python tools/readme_blocks.py shell README.md      # the walkthrough's shell blocks
    python tools/readme_blocks.py callback README.md   # the callback example

A block is chosen by the HTML comment right before its fence: `<!-- run: settings -->`,
`<!-- run: shell -->`, `<!-- run: callback -->` (invisible in the rendered README).

In a `shell` block, a line starting with `$ ` is a command as the user types it; the lines after it,
up to the next `$ `, are an excerpt of what the user sees (stdout and stderr, as on a terminal). A line
`...` in an excerpt stands for omitted lines. `steps()` splits a block that way (auditing/test_readme.py
runs them).
"""

import collections
import re
import sys

PROMPT = "$ "
OMITTED = "..."

Step = collections.namedtuple("Step", "command expected")


def blocks(text, kind):
    """The bodies of the fenced blocks marked `<!-- run: KIND -->`, in order."""
    pattern = re.compile(r"<!-- run: " + re.escape(kind) + r" -->\s*\n```[a-z]*\n(.*?)```", re.S)
    return [match.group(1) for match in pattern.finditer(text)]


def steps(block):
    """A shell block as Steps: (command typed, [lines of the excerpt shown after it])."""
    found = []
    for line in block.splitlines():
        if line.startswith(PROMPT):
            found.append(Step(line[len(PROMPT):], []))
        elif found:
            found[-1].expected.append(line)
        elif line.strip():
            raise ValueError(f"shell block: output before the first command: {line!r}")
    return found


def main(argv):
    kind, path = argv
    with open(path, encoding="utf-8") as handle:
        found = blocks(handle.read(), kind)
    if not found:
        sys.exit(f"readme_blocks: no '<!-- run: {kind} -->' block in {path}")
    sys.stdout.write("\n".join(found))


if __name__ == "__main__":
    main(sys.argv[1:])
