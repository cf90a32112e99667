"""
The README runs as written (issue 9, "The README runs as written" and item 5, "The walkthrough").

The README marks what is run with an HTML comment before a fenced block (`tools/readme_blocks.py`):

- `<!-- run: shell -->`: the walkthrough of "Investigating an incident". `TestWalkthrough` runs a fresh
  `python -m auditing.demo run --dir demo` in a temporary directory (laid out as the checkout after
  `make demo`), then every command as typed (`sh`, from that directory, the venv's bin/ first on PATH,
  120 columns) and compares its output with the README's excerpt (`excerpt_mismatch`): the same lines
  in the same order once what varies between runs is replaced (`VARIES`: times, connection ids,
  hashes, durations, numbers). Exit statuses are exact: a command followed by `echo $?` must exit
  with the status shown, any other must succeed. It starts a game, so it is opt-in (`requires_servers`).
- `<!-- run: settings -->`: the lines a game adds to its settings (`TestSettingsBlock`).
- `<!-- run: callback -->`: the custom callback example, given real records by a real Pipeline
  (`TestCallbackExample`).

README.md is not in an installed wheel: these tests skip when it is not next to the package.
"""

import difflib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
import unittest
from unittest import mock

from django.test import override_settings
from django.utils.module_loading import import_string
from evennia.utils.test_resources import EvenniaTest

from . import conf
from .event import RCV, SND, capture
from .pipeline import Pipeline
from .testing import requires_servers
from .testing.base import TempTrailMixin
from .testing.game import AUDITED_SESSION_CLASS

try:
    from hypothesis import given, settings as hypothesis_settings, strategies as st
except ImportError:  # a user's game may not have it
    given = None

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(CHECKOUT, "README.md")
BLOCKS_TOOL = os.path.join(CHECKOUT, "tools", "readme_blocks.py")
IN_CHECKOUT = os.path.isfile(README) and os.path.isfile(BLOCKS_TOOL)
NOT_IN_CHECKOUT = "README.md and tools/ are only in a checkout of the package, not in an installed wheel"

TRAIL = "demo/server/logs"  # where the walkthrough says the demo's trail is, from the checkout's top
COMMAND_TIMEOUT = 60  # seconds, each walkthrough command
DEMO_TIMEOUT = 600  # seconds: create, migrate, start and play, on a busy 2-core machine


def _blocks_tool():
    spec = importlib.util.spec_from_file_location("readme_blocks", BLOCKS_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_blocks(kind):
    with open(README, encoding="utf-8") as handle:
        return _blocks_tool().blocks(handle.read(), kind)


def walkthrough_steps():
    """[(block number, Step)] of every `<!-- run: shell -->` block, in README order."""
    tool = _blocks_tool()
    return [(number, step) for number, block in enumerate(readme_blocks("shell"), 1) for step in tool.steps(block)]


# ---------------------------------------------------------------- comparing output with the README

# What legitimately differs between two runs of the demo, replaced on both sides before comparing.
# Names, account ids (`#2`), kinds, directions, texts and masks are compared as they are.
VARIES = (
    (re.compile(r"\d{4}-\d\d-\d\d(?:[ T]\d\d:\d\d:\d\d(?:\.\d+)?Z?)?"), "<time>"),  # dates and times
    (re.compile(r"\b[0-9a-f]{9,14}-\d+\b"), "<conn>"),  # connection ids: hex start time and pid, a number
    (re.compile(r"\b[0-9a-f]{32}\b"), "<hash>"),  # the hash chain (`chain=`)
    (re.compile(r"\b\d+:\d\d:\d\d\b"), "<duration>"),
    (re.compile(r"(?<![#\w])\d[\d,.]*"), "<n>"),  # counts, sizes, seconds, sequence numbers, ports
    (re.compile(r"\s+"), " "),  # table columns are as wide as their widest cell
)
OMITTED = "..."


def normalise(line):
    """`line` with what varies between runs replaced by placeholders (`VARIES`), spaces collapsed."""
    for pattern, placeholder in VARIES:
        line = pattern.sub(placeholder, line)
    return line.strip()


def _trimmed(lines):
    lines = list(lines)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def excerpt_mismatch(expected, actual):
    """None when the README's excerpt `expected` matches the output lines `actual`; else why not.

    After `normalise`, each run of excerpt lines between `...` lines must appear in the output as
    consecutive lines, in order; the excerpt starts at the output's first line unless it begins with
    `...`, and ends at its last line unless it ends with `...`.
    """
    expected, actual = _trimmed(expected), _trimmed(actual)
    wanted = [normalise(line) for line in expected]
    got = [normalise(line) for line in actual]
    chunks, chunk = [], []
    for line in wanted:
        if line == OMITTED:
            chunks.append(chunk)
            chunk = []
        else:
            chunk.append(line)
    chunks.append(chunk)
    position = 0
    for index, chunk in enumerate(chunks):
        at_start = index == 0 and (not wanted or wanted[0] != OMITTED)
        at_end = index == len(chunks) - 1 and (not wanted or wanted[-1] != OMITTED)
        if not chunk:
            if at_start and at_end and got:
                return _report("the README shows no output, the command printed some", wanted, got)
            continue
        anywhere = [s for s in range(position, len(got) - len(chunk) + 1) if got[s:s + len(chunk)] == chunk]
        found = [s for s in anywhere if (not at_start or s == 0) and (not at_end or s + len(chunk) == len(got))]
        if found:
            position = found[0] + len(chunk)
            continue
        if anywhere:  # the lines are there, but the output has more before or after them
            where = "before the excerpt's first line" if at_start and anywhere[0] != 0 else "after its last line"
            return _report(f"the output has lines {where} (the README would show `...` there)", wanted, got)
        matched = max(_common_prefix(chunk, got[s:]) for s in range(position, len(got) + 1))
        return _report(f"this README line matches no output line in its place:\n    {chunk[matched]}", wanted, got)
    return None


def _common_prefix(chunk, lines):
    count = 0
    for wanted, got in zip(chunk, lines):
        if wanted != got:
            break
        count += 1
    return count


def _report(headline, wanted, got):
    diff = difflib.unified_diff(wanted, got, "README (normalised)", "output (normalised)", lineterm="", n=2)
    return headline + "\n" + "\n".join(diff)


STATUS_COMMAND = "echo $?"


def expected_status(next_step):
    """The exit status the README gives a command: what the `echo $?` right after it shows, else 0."""
    if next_step is None or next_step.command != STATUS_COMMAND:
        return 0
    shown = [line.strip() for line in next_step.expected if line.strip()]
    if len(shown) != 1 or not shown[0].isdigit():
        raise AssertionError(f"`{STATUS_COMMAND}` in the README shows {next_step.expected}, not one number")
    return int(shown[0])


# ---------------------------------------------------------------- the walkthrough's text


@unittest.skipUnless(IN_CHECKOUT, NOT_IN_CHECKOUT)
class TestWalkthroughText(unittest.TestCase):
    """What issue 9 asks of the walkthrough, read from the README itself (no server needed)."""

    def test_runs_from_one_directory_on_the_demo_trail_and_covers_each_subcommand_and_an_error(self):
        steps = walkthrough_steps()
        self.assertTrue(steps, "README.md has no '<!-- run: shell -->' block")
        commands = [step.command for _block, step in steps]
        for command in commands:
            self.assertNotRegex(command, r"(^|[;&|]\s*)(cd|pushd|popd)\b", "the walkthrough changes directory")
            if command.startswith("evennia-audit "):  # the trail named, never the current directory's
                self.assertRegex(command, r" --dir demo/", "a command relies on the default --dir")
        trail_named = [command for command in commands if f" --dir {TRAIL} " in command + " "]
        self.assertGreaterEqual(len(trail_named), len(commands) // 2, commands)
        used = {command.split()[1] for command in commands if command.startswith("evennia-audit ")}
        self.assertLessEqual({"sessions", "search", "replay", "export", "stats"}, used)
        statuses = [expected_status(step) for _block, step in steps if step.command == STATUS_COMMAND]
        self.assertIn(2, statuses, "no error case (exit status 2) in the walkthrough")
        self.assertIn(1, statuses, "no 'nothing matched' case (exit status 1) in the walkthrough")


# ---------------------------------------------------------------- the walkthrough, run


def _clean_env(bin_dir):
    """A user's shell: the venv's bin/ first on PATH, no test runner's Django or Python settings.
    Unbuffered Python output, so stdout and stderr interleave as on a terminal; 120 columns."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "PYTHONHOME", "NO_COLOR", "COLUMNS", "LINES")}
    env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), PYTHONUNBUFFERED="1", COLUMNS="120")
    return env


@requires_servers
@unittest.skipUnless(IN_CHECKOUT, NOT_IN_CHECKOUT)
class TestWalkthrough(unittest.TestCase):
    """A fresh demo, then every walkthrough command as written, compared with the README."""

    @classmethod
    def setUpClass(cls):
        from .demo import _game

        cls.top = tempfile.mkdtemp(prefix="readme-walk-")  # stands for the checkout's top directory
        cls.addClassCleanup(shutil.rmtree, cls.top, True)
        game_dir = os.path.join(cls.top, "demo")
        cls.addClassCleanup(lambda: _game(game_dir).stop())  # by the pids in the game's pid files
        cls.bin_dir = os.path.dirname(os.path.abspath(sys.executable))
        cls.env = _clean_env(cls.bin_dir)
        demo = subprocess.run([sys.executable, "-m", "auditing.demo", "run", "--dir", "demo"], cwd=cls.top,
                              env=cls.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=DEMO_TIMEOUT)
        cls.demo_output = demo.stdout.decode("utf-8", "replace")
        if demo.returncode != 0:
            raise AssertionError(f"the demo failed (exit {demo.returncode}):\n{cls.demo_output}")

    def run_command(self, command, previous_status):
        """`command` as typed, in sh from the checkout's top; `$?` is the previous command's status."""
        done = subprocess.run(f"(exit {previous_status}); {command}", shell=True, cwd=self.top, env=self.env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=COMMAND_TIMEOUT)
        return done.returncode, done.stdout.decode("utf-8", "replace").splitlines()

    def test_demo_says_where_evennia_audit_is_and_the_first_command(self):
        lines = self.demo_output.splitlines()
        evennia_audit = os.path.join(self.bin_dir, "evennia-audit")
        activate = [line.split() for line in lines if line.strip().startswith(". ")]
        self.assertEqual(len(activate), 1, self.demo_output)
        self.assertTrue(os.path.isfile(os.path.join(self.top, activate[0][1])), activate[0])
        self.assertEqual(activate[0][2:], ["#", "puts", evennia_audit, "on", "PATH"])
        self.assertTrue(os.access(evennia_audit, os.X_OK))
        first_command = walkthrough_steps()[0][1].command
        self.assertIn("  " + first_command, lines, "the demo's hint is not the README's first command")

    def test_every_command_gives_what_the_readme_shows(self):
        steps = walkthrough_steps()
        problems = []
        status = 0
        for index, (block, step) in enumerate(steps):
            status, output = self.run_command(step.command, status)
            if step.command == STATUS_COMMAND:
                continue  # checked with the command before it, exactly (numbers are loose elsewhere)
            wanted = expected_status(steps[index + 1][1] if index + 1 < len(steps) else None)
            if status != wanted:
                problems.append(f"shell block {block}: `{step.command}` exited {status}; the README says {wanted}"
                                " (a command not followed by `echo $?` must succeed)\n" + "\n".join(output))
                continue
            mismatch = excerpt_mismatch(step.expected, output)
            if mismatch:
                problems.append(f"shell block {block}: `{step.command}` (exit {status}): {mismatch}")
        if problems:
            self.fail(f"{len(problems)} of {len(steps)} README commands disagree with their output:\n\n"
                      + "\n\n".join(problems))


# ---------------------------------------------------------------- the comparison itself

RUN = ["# 25 records, 2026-12-01 16:20:40 .. 2026-12-01 16:20:44 UTC, connection(s) 6b0ef3d76bb0-3",
       "2026-12-01 16:20:40.935 *** connect protocol=telnet ip=127.0.0.1 chain=af22c3ddee8f180d62eb42bf28a882df "
       "chain_seq=6",
       "2026-12-01 16:20:41.284 > create demo_player ********",
       "2026-12-01 16:20:41.331 > y",
       "2026-12-01 16:20:43.202 *** login account=demo_player#2 protocol=telnet ip=127.0.0.1"]


class TestExcerptMatcher(unittest.TestCase):
    """The comparison fails on drift in substance and passes on what varies between runs."""

    def test_what_varies_between_runs_is_ignored(self):
        other_run = ["# 31 records, 2027-01-02 03:04:05 .. 2027-01-02 03:04:09 UTC, connection(s) 6b0ef4d9e9b-17",
                     "2027-01-02 03:04:05.001 *** connect protocol=telnet ip=127.0.0.1 "
                     "chain=0123456789abcdef0123456789abcdef chain_seq=12",
                     "2027-01-02 03:04:05.100    > create demo_player ********",
                     "2027-01-02 03:04:06.000 > y",
                     "2027-01-02 03:04:07.000 *** login account=demo_player#2 protocol=telnet ip=127.0.0.1"]
        self.assertIsNone(excerpt_mismatch(RUN, other_run))
        self.assertIsNone(excerpt_mismatch([RUN[0], "...", RUN[3]], other_run[:4]))
        self.assertIsNone(excerpt_mismatch(["...", RUN[2], "..."], other_run))

    def test_a_different_record_text_order_account_or_unmasked_secret_fails(self):
        changes = {
            "text": RUN[:3] + ["2026-12-01 16:20:41.331 > n"] + RUN[4:],
            "order": RUN[:2] + [RUN[3], RUN[2]] + RUN[4:],
            "account": RUN[:4] + [RUN[4].replace("demo_player#2", "demo_player#7")],
            "direction": RUN[:3] + ["2026-12-01 16:20:41.331 < y"] + RUN[4:],
            "secret": RUN[:2] + ["2026-12-01 16:20:41.284 > create demo_player hunter2"] + RUN[3:],
            "missing record": RUN[:3] + RUN[4:],
            "extra record": RUN + ["2026-12-01 16:20:44.000 *** logout account=demo_player#2"],
        }
        for change, output in changes.items():
            with self.subTest(change):
                problem = excerpt_mismatch(RUN, output)
                self.assertIsNotNone(problem)
                self.assertIn("after its last line" if change == "extra record" else "matches no output line",
                              problem)
                self.assertIn("--- README (normalised)", problem)

    def test_omitted_lines_only_where_the_readme_says(self):
        self.assertIsNotNone(excerpt_mismatch([RUN[0], RUN[3]], RUN[:4]))  # no `...` between them
        self.assertIsNotNone(excerpt_mismatch(RUN[1:], RUN))  # the excerpt starts at the first line
        self.assertIsNotNone(excerpt_mismatch(RUN[:-1], RUN))  # ... and ends at the last
        self.assertIsNotNone(excerpt_mismatch([], RUN[:1]))  # no output shown: none printed
        self.assertIsNone(excerpt_mismatch(RUN[:2] + ["..."], RUN))

    if given is not None:

        @hypothesis_settings(max_examples=200, deadline=None)
        @given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")),
                       min_size=1, max_size=40).filter(lambda s: s.strip() and s.strip() != OMITTED),
               st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ*'\"", min_size=1,
                       max_size=10))
        def test_any_text_change_is_caught(self, text, change):
            line = f"2026-12-01 16:20:43.611 > say {text}"
            changed = f"2026-12-01 16:20:43.611 > say {text}{change}"
            self.assertIsNone(excerpt_mismatch([line], [line]))
            self.assertIsNotNone(excerpt_mismatch([line], [changed]))
    else:

        def test_any_text_change_is_caught(self):
            self.skipTest("hypothesis is not installed (pip install hypothesis)")


# ---------------------------------------------------------------- the settings block


@unittest.skipUnless(IN_CHECKOUT, NOT_IN_CHECKOUT)
class TestSettingsBlock(unittest.TestCase):
    def test_the_readme_settings_turn_auditing_on(self):
        (block,) = readme_blocks("settings")
        namespace = {}
        exec("from evennia.settings_default import *\n" + block, namespace)  # as in a game's settings.py
        self.assertEqual(namespace["SERVER_SESSION_CLASS"], AUDITED_SESSION_CLASS)
        from evennia.server.serversession import ServerSession

        self.assertTrue(issubclass(import_string(namespace["SERVER_SESSION_CLASS"]), ServerSession))
        ours = {name: value for name, value in namespace.items() if name.startswith("AUDIT_")}
        with tempfile.TemporaryDirectory() as log_dir, override_settings(**ours, AUDIT_LOG_DIR=log_dir):
            config = conf.load()
        self.assertTrue(config.audit_in, "AUDIT_IN is not on")
        self.assertTrue(config.audit_out, "AUDIT_OUT is not on")


# ---------------------------------------------------------------- the callback example


@unittest.skipUnless(IN_CHECKOUT, NOT_IN_CHECKOUT)
class TestCallbackExample(TempTrailMixin, EvenniaTest):
    """The README's callback, as AUDIT_CALLBACK of a real Pipeline, gets every kind of record."""

    start_service = False  # it builds its own pipelines (a service would restart on its overrides)

    def example(self):
        (block,) = readme_blocks("callback")
        module = types.ModuleType("readme_callback_example")
        exec(compile(block, "README.md <!-- run: callback -->", "exec"), module.__dict__)
        functions = [value for value in vars(module).values()
                     if inspect.isfunction(value) and value.__module__ == module.__name__]
        self.assertEqual(len(functions), 1, "the example defines one callback")
        return module, functions[0]

    def test_example_takes_io_lifecycle_and_loss_records_without_raising(self):
        module, callback = self.example()
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        with override_settings(AUDIT_CALLBACK=callback, AUDIT_QUEUE_SIZE=4, AUDIT_LOG_DIR=directory,
                               AUDIT_IN=True, AUDIT_OUT=True):
            config = conf.load()
        pipeline = Pipeline(config)  # driven by hand (flush) : no writer thread, no timing
        self.addCleanup(pipeline.stop, 0)
        session = self.session
        session.audit_conn, session.audit_seq = "readme-1", 0
        with mock.patch("auditing.pipeline._log") as log:
            for number in range(10):  # more than the queue holds: the oldest 6 are lost
                pipeline.submit(capture(session, RCV, {"text": ([f"say {number}"], {})}))
            pipeline.flush()
            for kind, who in (("logout", (self.account, None)), ("disconnect", (self.account, None))):
                pipeline.submit(capture(session, None, {"reason": "quit"} if kind == "disconnect" else {},
                                        kind=kind, who=who))
                pipeline.flush()
            session.audit_conn, session.audit_seq = "readme-2", 0
            for kind in ("connect", "login"):
                pipeline.submit(capture(session, None, {}, kind=kind))
                pipeline.flush()
            pipeline.submit(capture(session, SND, {"text": (["You say, \"hi\""], {})}))
            pipeline.flush()
        raised = [call for call in log.call_args_list if "raised" in str(call)]
        self.assertEqual(raised, [], "the example callback raised")
        stored = []
        while not module.MY_QUEUE.empty():
            stored.append(json.loads(module.MY_QUEUE.get_nowait()))
        kinds = [record["kind"] for record in stored]
        self.assertEqual(kinds.count("loss"), 1, kinds)
        self.assertEqual(stored[kinds.index("loss")]["lost"], 6)
        self.assertLessEqual({"io", "loss", "connect", "login", "logout", "disconnect"}, set(kinds))
        self.assertEqual(pipeline.stats()["delivered"], len(stored) - 1)
        for record in stored:
            self.assertNotIn("objects", record)
            self.assertIsInstance(record["account_is_staff"], bool, record)
        self.assertTrue([r for r in stored if r["kind"] == "login"][0]["account_is_staff"] is
                        bool(self.account.is_superuser))
