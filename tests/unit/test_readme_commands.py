"""Every command the READMEs show works as written from the repository root after `make install`.

The commands are the lines of the ```bash / ```sh / ```console blocks of :data:`DOCS` (comments, prompts and
continuation backslashes handled, `&&` / `;` / `|` chains split) and the inline code spans of their prose that
are commands (`make <target> ...`, `.venv/bin/...`, and anything starting with a program of :data:`BARE` or
:data:`EXTERNAL`). Each one is cheap or expensive, by one rule:

- **cheap** (it only prints and exits): `make help`, `make sweep-list`, a `.venv/bin/` program given `--help`,
  `-h`, `--print-config` or `--list`, and a `.venv/bin/python -c` one-liner. It runs, from the repository root,
  and must exit 0.
- **expensive** (it trains, downloads, evaluates, serves or asks questions): everything else. It is checked
  without running it: a `make` command must dry-run (`make -n` with the same arguments: the target exists and
  its variables expand; no recipe runs), a `.venv/bin/` program must be there, and a program of
  :data:`EXTERNAL` is taken as installed.

Every command, cheap or expensive: each repository path it names (a config, a script, a `-m` module of the
repository) exists, and `python`, `pip`, `accelerate`, `tensorboard`, ... are called through `.venv/bin/`; only
packages/dkl-core/README.md, written for people who `pip install` that package alone, may call them bare. A
program the rule does not know fails the test, so that a new kind of command gets a class.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = (
    "README.md",
    "recipes/kd/README.md",
    "recipes/adv/README.md",
    "recipes/ssl/README.md",
    "packages/dkl-core/README.md",
    "CONTRIBUTING.md",
    "benchmarks/README.md",
)
STANDALONE_DOC = "packages/dkl-core/README.md"  # for a plain `pip install dkl-core`: bare `pip`/`python` are right

VENV_BIN = ".venv/bin/"
# Programs that .venv provides: a README outside STANDALONE_DOC writes them as .venv/bin/<name>.
BARE = frozenset(
    {"python", "python3", "pip", "pip3", "accelerate", "accelerate-launch", "tensorboard", "torchrun", "pytest", "ruff"}
)
# Programs from outside the repository, used as they are (downloads, archives, SLURM).
EXTERNAL = frozenset({"wget", "curl", "mkdir", "tar", "sbatch"})
CHEAP_MAKE_TARGETS = frozenset({"help", "sweep-list"})
CHEAP_FLAGS = frozenset({"--help", "-h", "--print-config", "--list"})
# Top-level folders of the repository: a path under one of them must exist. data/, runs/ and the like are
# written by the commands themselves.
REPO_DIRS = frozenset({"packages", "recipes", "scripts", "benchmarks", "tools", "tests", "requirements"})
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|\*|\{")
TIMEOUT_S = 120

FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")  # a code span, at most one line break inside


@dataclass(frozen=True)
class Command:
    """One command of one README: its words (shell-split) and where it is shown."""

    words: tuple[str, ...]
    where: str  # "README.md:190"
    doc: str

    @property
    def text(self) -> str:
        return shlex.join(self.words)


def _line_number(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _split_commands(line: str) -> list[list[str]]:
    """Shell words of each command of a line (`#` comments dropped, chains split at `&&`, `||`, `;`, `|`)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word and set(word) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(word)
    # Leading VAR=value assignments set the environment of the command that follows them.
    stripped = [c[next((i for i, w in enumerate(c) if not re.match(r"^\w+=", w)), len(c)) :] for c in commands]
    return [c for c in stripped if c]


def _fenced_commands(doc: str, text: str) -> list[Command]:
    commands = []
    for fence in FENCE.finditer(text):
        if fence.group(1).strip() not in SHELL_LANGUAGES:
            continue
        console = fence.group(1).strip() == "console"
        first = _line_number(text, fence.start(2))
        pending, pending_at = "", first
        for number, raw in enumerate(fence.group(2).splitlines(), start=first):
            line = raw.strip()
            if not pending:
                pending_at = number
                if console:
                    if not line.startswith("$ "):
                        continue  # a console block's output
                    line = line[2:]
                elif line.startswith("$ "):
                    line = line[2:]
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = pending + line, ""
            for words in _split_commands(line):
                commands.append(Command(tuple(words), f"{doc}:{pending_at}", doc))
    return commands


def _is_inline_command(words: list[str]) -> bool:
    """Whether a code span of the prose is a command to type (not the name of a tool or a target)."""
    program = words[0]
    if program == "make":  # `make <target> ...`; `make sweep-*` names several targets, `make` alone is the tool
        return len(words) > 1 and not any("*" in w for w in words)
    if program.startswith(VENV_BIN):
        return True
    if program in EXTERNAL:  # `sbatch` alone names the tool
        return len(words) > 1
    if program in {"accelerate", "accelerate-launch"}:
        # `accelerate launch` / `accelerate config` name the tool; with an option or a path it is an invocation.
        return len(words) > 2 and (words[2].startswith("-") or "/" in words[2])
    return program in BARE


def _inline_commands(doc: str, text: str) -> list[Command]:
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep the line numbers
    commands = []
    for span in INLINE.finditer(prose):
        try:
            for words in _split_commands(" ".join(span.group(1).split())):
                if _is_inline_command(words):
                    commands.append(Command(tuple(words), f"{doc}:{_line_number(prose, span.start())}", doc))
        except ValueError:  # unbalanced quotes: prose such as `'s`, not a command
            continue
    return commands


def _all_commands() -> list[Command]:
    commands = []
    for doc in DOCS:
        text = (REPO / doc).read_text(encoding="utf-8")
        commands += _fenced_commands(doc, text) + _inline_commands(doc, text)
    return commands


COMMANDS = _all_commands()


def _is_cheap(command: Command) -> bool:
    """The rule of the module docstring: cheap commands only print and exit."""
    program, args = command.words[0], command.words[1:]
    if program == "make":
        targets = [a for a in args if not a.startswith("-") and "=" not in a]
        return bool(targets) and set(targets) <= CHEAP_MAKE_TARGETS
    if not program.startswith(VENV_BIN):
        return False
    return bool(CHEAP_FLAGS & set(args)) or (program == VENV_BIN + "python" and args[:1] == ("-c",))


def _unique(commands: list[Command]) -> dict[tuple[str, ...], list[Command]]:
    """The commands by their words: each distinct command is checked once, for every place that shows it."""
    by_words: dict[tuple[str, ...], list[Command]] = {}
    for command in commands:
        by_words.setdefault(command.words, []).append(command)
    return by_words


CHEAP = _unique([c for c in COMMANDS if _is_cheap(c)])
MAKE_DRY_RUNS = _unique([c for c in COMMANDS if c.words[0] == "make" and not _is_cheap(c)])


def _run(words: tuple[str, ...], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}  # not a sub-make
    return subprocess.run(words, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _places(commands: list[Command]) -> str:
    return ", ".join(c.where for c in commands)


# ----------------------------------------------------------------------------------------------------------------


def venv_problems(commands: list[Command]) -> list[str]:
    """Bare `python`, `pip`, `accelerate`... outside STANDALONE_DOC, missing .venv/bin programs, unknown programs."""
    wrong = []
    for command in commands:
        program = command.words[0]
        if program in BARE and command.doc != STANDALONE_DOC:
            wrong.append(f"{command.where}: {command.text!r}: write {VENV_BIN}{program} (make install creates .venv)")
        elif program.startswith(VENV_BIN) and not (REPO / program).is_file():
            wrong.append(f"{command.where}: {command.text!r}: {program} is not there after make install")
        elif program not in BARE | EXTERNAL and program != "make" and not program.startswith(VENV_BIN):
            wrong.append(f"{command.where}: {command.text!r}: unknown program {program!r}; classify it in this test")
    return wrong


def _repo_paths(command: Command) -> list[str]:
    """Paths of the repository a command names: a word, a KEY=value, an --option=value, a `-m` module."""
    paths = []
    for word in command.words[1:]:
        value = word.split("=", 1)[1] if "=" in word else word
        value = re.sub(r"\[[\w,]+\]$", "", value)  # pip's extras: packages/dkl-core[autoattack]
        if "://" not in value and not PLACEHOLDER.search(value) and value.split("/", 1)[0] in REPO_DIRS:
            paths.append(value)
    for flag, module in zip(command.words, command.words[1:]):
        if flag == "-m" and module.split(".")[0] in REPO_DIRS and not PLACEHOLDER.search(module):
            base = module.replace(".", "/")  # tools.sweep, benchmarks
            paths.append(base if (REPO / base).is_dir() else base + ".py")
    return paths


def path_problems(commands: list[Command]) -> list[str]:
    return [
        f"{command.where}: {command.text!r}: {path} does not exist"
        for command in commands
        for path in _repo_paths(command)
        if not (REPO / path).exists()
    ]


def dry_run_problems(commands: list[Command]) -> list[str]:
    """`make -n` with the README's arguments: the target exists and expands; no recipe runs (it only prints)."""
    failed = []
    for words, shown in _unique(commands).items():
        dry = ("make", "-n", *words[1:])
        result = _run(dry, timeout=60)
        if result.returncode != 0:
            failed.append(f"{_places(shown)}: {shlex.join(dry)} exited {result.returncode}: {result.stderr.strip()}")
    return failed


# ----------------------------------------------------------------------------------------------------------------


def test_the_readmes_show_commands_of_each_class():
    """The extraction finds the commands (the tests below must not pass by finding none)."""
    shown = {c.text for c in COMMANDS}
    for expected in (
        "make demo",
        "make test",
        "make help",
        "make sweep-list",
        ".venv/bin/python recipes/kd/train.py --help",
        ".venv/bin/accelerate config",
        ".venv/bin/tensorboard --logdir runs/",
    ):
        assert expected in shown, f"{expected!r} is no longer among the README commands found: {sorted(shown)}"
    assert len(CHEAP) >= 4 and len(MAKE_DRY_RUNS) >= 20
    for doc in DOCS:
        if "```bash" in (REPO / doc).read_text(encoding="utf-8"):
            assert any(c.doc == doc for c in COMMANDS), f"no command found in {doc}"


def test_the_checks_catch_what_they_are_for():
    """On a made-up README: bare programs, a missing config or module, an unknown target; the cheap/expensive rule."""
    text = (
        "Run `make help`, then `tensorboard --logdir runs/`; every run goes through `accelerate launch`.\n\n"
        "```bash\n"
        "python recipes/kd/train.py --help   # a comment\n"
        "accelerate launch \\\n"
        "  recipes/kd/train.py --config recipes/kd/configs/no_such_config.yaml\n"
        "make no-such-target && make train-kd CONFIG=recipes/kd/configs/cifar100_vgg13_vgg8_kd.yaml\n"
        "$ .venv/bin/python -m tools.no_such_tool --list\n"
        "```\n"
    )
    commands = _fenced_commands("made-up.md", text) + _inline_commands("made-up.md", text)
    assert [c.text for c in commands] == [
        "python recipes/kd/train.py --help",
        "accelerate launch recipes/kd/train.py --config recipes/kd/configs/no_such_config.yaml",
        "make no-such-target",
        "make train-kd CONFIG=recipes/kd/configs/cifar100_vgg13_vgg8_kd.yaml",
        ".venv/bin/python -m tools.no_such_tool --list",
        "make help",
        "tensorboard --logdir runs/",
    ]
    assert [c.where for c in commands][:3] == ["made-up.md:4", "made-up.md:5", "made-up.md:7"]
    assert [_is_cheap(c) for c in commands] == [False, False, False, False, True, True, False]
    bare = venv_problems(commands)
    assert len(bare) == 3 and all("write .venv/bin/" in line for line in bare), bare
    assert path_problems(commands) == [
        "made-up.md:5: 'accelerate launch recipes/kd/train.py --config recipes/kd/configs/no_such_config.yaml': "
        "recipes/kd/configs/no_such_config.yaml does not exist",
        "made-up.md:8: '.venv/bin/python -m tools.no_such_tool --list': tools/no_such_tool.py does not exist",
    ]
    failed = dry_run_problems([c for c in commands if c.words[0] == "make" and not _is_cheap(c)])
    assert len(failed) == 1 and failed[0].startswith("made-up.md:7: make -n no-such-target exited 2"), failed


def test_every_program_is_called_through_the_venv_or_is_known():
    wrong = venv_problems(COMMANDS)
    assert not wrong, "\n".join(wrong)


def test_every_path_a_command_names_exists():
    missing = path_problems(COMMANDS)
    assert not missing, "\n".join(missing)


def test_every_make_command_dry_runs():
    failed = dry_run_problems([c for c in COMMANDS if c.words[0] == "make" and not _is_cheap(c)])
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("words", list(CHEAP), ids=[shlex.join(w) for w in CHEAP])
def test_cheap_command_runs(words):
    result = _run(words)
    assert result.returncode == 0, (
        f"{shlex.join(words)} (shown at {_places(CHEAP[words])}) exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    )
    assert result.stdout.strip(), f"{shlex.join(words)} printed nothing"
