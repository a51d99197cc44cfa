"""The Chinese guides (AWQ_SERVICE_GUIDE.md, AWQ.md) stay true to the server.

Read from the guides' own text: every ``--flag`` exists where the command that names it says (the server's
parser, a script's, the client's, or a short list of third-party tools), every server command line parses,
every endpoint is a route of the app, every default in the guide's tables is the code's, the compose
snippets and profiles are the compose file's, links, anchors and repository paths resolve. The e2e tests
run the guide's curl, Python and JavaScript examples against a real tiny server and check that the JSON
examples show fields the server really answers.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from serve import client as cli
from serve.config import APP_DIR, ENV_PREFIX, Settings, build_parser, parse_size
from serve.errors import InvalidParameter
from serve.params import parse_params
from tests.conftest import ROOT
from tests.e2e.conftest import tiny_server
from tests.e2e.test_guide_examples import Server

SERVICE_GUIDE = "AWQ_SERVICE_GUIDE.md"
GUIDES = (SERVICE_GUIDE, "AWQ.md")
SERVER_SCRIPT = "serve/qwen2_5_omni_awq.py"
# Scripts whose own flags come before (or mix with) server flags, which they pass on to the server's parser.
WRAPPERS = ("scripts/smoke_gpu.py", "scripts/evaluate.py")
# Third-party tools the guides run, with the long flags they use (not checkable against the tools here).
EXTERNAL: dict[str, frozenset[str]] = {
    "docker": frozenset({"--build-arg", "--gpus", "--rm"}),
    "docker-compose": frozenset({"--profile", "--rm"}),
    "hf": frozenset({"--local-dir"}),
    "redis-server": frozenset({"--port", "--appendonly"}),
    **{tool: frozenset() for tool in ("cd", "chown", "curl", "echo", "export", "ffmpeg", "git", "grep", "ls",
                                      "mkdir", "nvidia-smi", "openssl", "python -c", "sleep")},
}
SHELL_PREFIXES = {"while", "until", "do", "done", "if", "then", "else", "fi", "!", "sudo"}
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
INLINE_CODE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
BASE_URL = "http://localhost:5000"
URL_PATH = re.compile(re.escape(BASE_URL) + r"(/[^\s\"'`)]*)?")
METHOD_PATH = re.compile(r"`(GET|POST|DELETE) (/[^`\s]*)`")
PLACEHOLDER = re.compile(r"<[^>]*>|\{[^}]*\}|\$\{?\w+\}?")
SAMPLE_ID = "0" * 32  # a well-formed job id, standing in for <job_id>, $JOB_ID, {model_id}...
OPENAI_BASE = "/v1"  # the OpenAI SDK's base_url, to which the SDK adds the routes
NOT_ROUTES = ("/app/",)  # the container's folders
# Routes the endpoint table may leave out: the page's files.
UNLISTED_ROUTES = ("/static/<path:filename>",)
REPO_DIRS = ("serve/", "scripts/", "benchmarks/", "tests/", "docker/", "docs/")


# --- reading the guides ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """A fenced code block of a guide."""

    guide: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.guide}:{self.line}"


@dataclass(frozen=True)
class Guide:
    name: str
    text: str
    blocks: tuple[Block, ...]
    prose: tuple[tuple[int, str], ...]  # (line number, line) outside code blocks


@cache
def guide(name: str) -> Guide:
    lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    opening: tuple[int, str, int] | None = None  # line, language, indentation
    body: list[str] = []
    for number, line in enumerate(lines, 1):
        fence = re.fullmatch(r"( *)```(\w*)\s*", line)
        if opening is None and fence:
            opening, body = (number, fence.group(2), len(fence.group(1))), []
        elif opening is not None and re.fullmatch(r" *```\s*", line):
            blocks.append(Block(name, opening[0], opening[1], "\n".join(body) + "\n"))
            opening = None
        elif opening is not None:
            body.append(line[opening[2]:])
        else:
            prose.append((number, line))
    assert opening is None, f"{name}:{opening}: unclosed code block"
    return Guide(name, "\n".join(lines), tuple(blocks), tuple(prose))


def inline_code(name: str) -> Iterator[tuple[str, str]]:
    """(where, text) of every inline code span of a guide."""
    for number, line in guide(name).prose:
        for span in INLINE_CODE.findall(line):
            yield f"{name}:{number}", span


def tables(name: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(header cells, rows of cells) of every table of a guide."""
    rows: list[list[str]] = []
    last = 0
    for number, line in (*guide(name).prose, (0, "")):
        if rows and not (line.startswith("|") and number == last + 1):
            yield rows[0], rows[2:]
            rows = []
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            last = number


def shell_blocks(name: str) -> list[Block]:
    return [b for b in guide(name).blocks if b.lang == "bash"]


# --- shell commands -------------------------------------------------------------------------------------

def simple_commands(script: str) -> list[list[str]]:
    """The words of each simple command of a shell snippet (continuations joined, comments, operators,
    redirections, leading assignments and keywords dropped)."""
    commands: list[list[str]] = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        redirected = False
        for token in lexer:
            if set(token) <= set("();|&<>"):
                if "<" in token or ">" in token:
                    redirected = True  # the next word is a file, and the command goes on
                    continue
                commands.append(words)
                words = []
            elif redirected:
                redirected = False
            else:
                words.append(token)
        commands.append(words)
    result = []
    for words in commands:
        while words and (ASSIGNMENT.match(words[0]) or words[0] in SHELL_PREFIXES):
            words = words[1:]
        if words:
            result.append(words)
    return result


def invocations(words: list[str]) -> Iterator[tuple[str, list[str]]]:
    """(program, arguments) of a command and of the command it runs (``docker-compose run … python3 …``).

    A Python script is named by its path as written (``scripts/evaluate.py``), a module by its name."""
    program = Path(words[0]).name
    if program in ("python", "python3") and len(words) > 1:
        if words[1] == "-c":
            yield "python -c", []
        elif words[1] == "-m":
            yield words[2], words[3:]
        else:
            yield words[1], words[2:]
        return
    if program in ("bash", "sh") and len(words) > 1:
        yield words[1], words[2:]
        return
    for i, word in enumerate(words[1:], 1):
        if program.startswith("docker") and Path(word).name in ("python", "python3"):
            yield program, words[1:i]
            yield from invocations(words[i:])
            return
    yield program, words[1:]


def parser_flags(parser: argparse.ArgumentParser) -> frozenset[str]:
    return frozenset(s for action in parser._actions for s in action.option_strings if s.startswith("--"))


SERVER_FLAGS = parser_flags(build_parser())


@cache
def script_flags(path: str) -> frozenset[str]:
    """The long flags a script of this repository defines: its ``add_argument("--x", ...)`` calls, or for a
    shell script the flags its text names."""
    source = (ROOT / path).read_text(encoding="utf-8")
    if path.endswith(".sh"):
        return frozenset(FLAG.findall(source))
    return frozenset(arg.value for node in ast.walk(ast.parse(source))
                     if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                     and node.func.attr == "add_argument"
                     for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"))


def flags_of(program: str) -> frozenset[str] | None:
    """The long flags ``program`` takes; None for a program these tests do not know."""
    if program == SERVER_SCRIPT:
        return SERVER_FLAGS
    if program in WRAPPERS:
        return script_flags(program) | SERVER_FLAGS
    if program == "serve.client":
        return parser_flags(cli.build_parser())
    if program.endswith((".py", ".sh")) and (ROOT / program).is_file():
        return script_flags(program)
    return EXTERNAL.get(program)


@cache
def own_flags() -> frozenset[str]:
    """Every flag of this repository's programs: what a flag named outside a command may be."""
    scripts = [str(p.relative_to(ROOT)) for pattern in ("scripts/*.py", "scripts/*.sh", "benchmarks/*.py", "*.sh")
               for p in ROOT.glob(pattern)]
    return SERVER_FLAGS | parser_flags(cli.build_parser()) | frozenset().union(*map(script_flags, scripts))


def server_parse_error(args: list[str]) -> str | None:
    """Why the server's parser refuses ``args`` (None when it takes them)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as exc:
        return stderr.getvalue().strip().splitlines()[-1] if exc.code else None  # --help exits with 0
    return None


def command_problems(where: str, script: str) -> Iterator[str]:
    """What is wrong with the flags of each command of a shell snippet."""
    for words in simple_commands(script):
        for program, args in invocations(words):
            allowed = flags_of(program)
            if allowed is None:
                yield f"{where}: {program!r} is not a program these tests know (add it to EXTERNAL)"
                continue
            for arg in args:
                if arg.startswith("--") and arg != "--" and arg.split("=")[0] not in allowed:
                    yield f"{where}: {program} has no flag {arg.split('=')[0]}"
            if program == SERVER_SCRIPT:
                server_args = args
            elif program == "scripts/evaluate.py" and "--" in args:  # the engine's flags follow --
                server_args = args[args.index("--") + 1:]
            else:
                continue
            if error := server_parse_error(server_args):
                yield f"{where}: the server refuses {' '.join(server_args)!r}: {error}"


def is_command(text: str) -> bool:
    try:
        commands = simple_commands(text)
    except ValueError:  # not shell (an unbalanced quote)
        return False
    return bool(commands) and all(flags_of(p) is not None for w in commands for p, _ in invocations(w))


# --- the app's routes -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def url_map(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Map]:
    """The routes of the app as create_app builds it (no model is needed to list them)."""
    from serve.app import create_app
    from serve.services import EXTENSION_KEY

    root = tmp_path_factory.mktemp("routes")
    app = create_app(Settings(checkpoint_path=str(root / "no-model"), device="cpu", models_dir=root / "Qwen",
                              inputs_dir=root / "inputs", temp_dir=root / "temp", outputs_dir=root / "outputs",
                              data_dir=root / "data"))
    yield app.url_map
    app.extensions[EXTENSION_KEY].close()


def route_of(url_map: Map, path: str, method: str | None = None) -> Rule | None:
    """The rule that serves ``path`` (placeholders filled in; any method unless ``method``), if any."""
    concrete = PLACEHOLDER.sub(SAMPLE_ID, path.split("?")[0])
    adapter = url_map.bind("localhost")
    for candidate in [method] if method else ["GET", "POST", "DELETE"]:
        try:
            rule, _ = adapter.match(concrete, method=candidate, return_rule=True)
            return rule
        except HTTPException:
            continue
    return None


def guide_urls(name: str) -> Iterator[tuple[str, str | None, str]]:
    """(where, method or None, path) of every endpoint a guide shows: in its tables and prose as
    ``METHOD /path``, as ``http://localhost:5000/...`` anywhere, and as inline ``/path``."""
    g = guide(name)
    for number, line in g.prose:
        for method, path in METHOD_PATH.findall(line):
            yield f"{name}:{number}", method, path
        for match in URL_PATH.finditer(line):
            yield f"{name}:{number}", None, match.group(1) or "/"
    for block in g.blocks:
        for match in URL_PATH.finditer(block.text):
            yield block.where, None, match.group(1) or "/"
    for where, span in inline_code(name):
        if span.startswith("/") and not span.startswith(NOT_ROUTES):
            yield where, None, span


# --- checks on the text ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GUIDES)
def test_every_flag_exists_where_the_guide_uses_it(name: str) -> None:
    problems: list[str] = []
    for block in guide(name).blocks:
        if block.lang == "bash":
            problems += command_problems(block.where, block.text)
        else:  # YAML, diagrams: flags named there must be ours (test_the_compose_snippets parses the commands)
            problems += [f"{block.where}: no program has {flag}" for flag in FLAG.findall(block.text)
                         if flag not in own_flags()]
    for where, span in inline_code(name):
        if is_command(span):
            problems += command_problems(where, span)
        else:
            problems += [f"{where}: no program has {flag}" for flag in FLAG.findall(span) if flag not in own_flags()]
    for number, line in guide(name).prose:
        outside_code = INLINE_CODE.sub("", line)
        problems += [f"{name}:{number}: no program has {flag}" for flag in FLAG.findall(outside_code)
                     if flag not in own_flags()]
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_renamed_flag() -> None:
    assert list(command_problems("x", f".venv/bin/python {SERVER_SCRIPT} --idle-timeout 300 --local-model"
                                      " --segment-duration 30")) == []
    assert list(command_problems("x", f"python3 {SERVER_SCRIPT} --idle-seconds 300")) == [
        f"x: {SERVER_SCRIPT} has no flag --idle-seconds",
        "x: the server refuses '--idle-seconds 300': qwen2_5_omni_awq.py: error: unrecognized arguments: "
        "--idle-seconds 300"]
    assert list(command_problems("x", "docker-compose run --rm svc python3 scripts/smoke_gpu.py --jsn a")) == [
        "x: scripts/smoke_gpu.py has no flag --jsn"]
    assert list(command_problems("x", "bash scripts/setup.sh --dev && docker-compose --profile awq up")) == []
    assert list(command_problems("x", "make all")) == ["x: 'make' is not a program these tests know (add it to "
                                                       "EXTERNAL)"]


@pytest.mark.parametrize("name", GUIDES)
def test_every_endpoint_is_a_route_of_the_app(name: str, url_map: Map) -> None:
    problems = [f"{where}: {method or ''} {path} is not a route of the app".replace("  ", " ")
                for where, method, path in guide_urls(name)
                if path != OPENAI_BASE and route_of(url_map, path, method) is None]
    assert not problems, "\n".join(problems)
    assert route_of(url_map, "/status/$JOB_ID") is not None and route_of(url_map, "/stat/<job_id>") is None


def test_the_endpoint_table_lists_every_route(url_map: Map) -> None:
    documented = {getattr(route_of(url_map, path, method), "endpoint", None)
                  for _, method, path in guide_urls(SERVICE_GUIDE) if method}
    missing = [f"{sorted(rule.methods - {'HEAD', 'OPTIONS'})} {rule.rule}" for rule in url_map.iter_rules()
               if rule.endpoint not in documented and rule.rule not in UNLISTED_ROUTES]
    assert not missing, f"routes {SERVICE_GUIDE} does not show as `METHOD /path`: {missing}"


def default_problem(stated: str, actual: object) -> str | None:
    """Why a guide's default cell (`value`, 關閉 off, 開啟 on, 無 none, — nothing) misstates ``actual``."""
    literal = re.match(r"`([^`]*)`", stated)
    if literal is None:
        word = stated[:1]
        expected = {"關": actual is False, "開": actual is True, "無": actual in (None, ""), "—": actual in (None, "")}
        if word not in expected:
            return f"state the default as `value`, 關閉, 開啟, 無 or — (got {stated!r})"
        return None if expected[word] else f"{stated!r} but the code's default is {actual!r}"
    value = literal.group(1)
    if isinstance(actual, bool):
        same = value == str(actual).lower()
    elif isinstance(actual, Path):
        same = APP_DIR / value.rstrip("/") == actual
    elif isinstance(actual, int | float):
        try:
            same = float(value) == actual
        except ValueError:
            same = parse_size(value) == actual
    else:
        same = value == actual
    return None if same else f"`{value}` but the code's default is {actual!r}"


def server_default_rows() -> Iterator[tuple[str, str]]:
    """(flag, default cell) of the guide's tables of server flags."""
    for header, rows in tables(SERVICE_GUIDE):
        if header[:2] == ["參數", "預設值"]:
            for row in rows:
                flags = FLAG.findall(row[0])
                assert len(flags) == 1, f"one flag per row: {row}"
                yield flags[0], row[1]


def test_the_server_defaults_are_the_codes() -> None:
    rows = dict(server_default_rows())
    problems = []
    for flag, stated in rows.items():
        field = Settings.model_fields.get(flag[2:].replace("-", "_"))
        problem = "not a setting" if field is None else default_problem(stated, field.default)
        if problem:
            problems.append(f"{flag}: {problem}")
    assert not problems, "\n".join(problems)
    undocumented = sorted(f"--{name.replace('_', '-')}" for name in Settings.model_fields) - rows.keys()
    assert not undocumented, f"flags without a row in {SERVICE_GUIDE}'s tables of defaults: {undocumented}"
    assert default_problem("`5000`", 5000) is None and default_problem("`4G`", 4 * 1024**3) is None
    assert default_problem("`300`", 600.0) == "`300` but the code's default is 600.0"


def accepted(field: str, value: str) -> bool:
    try:
        parse_params({field: value}, Settings.model_construct(aligner_path="aligner"))
    except InvalidParameter:
        return False
    return True


def range_problems(field: str, cell: str, default: object) -> Iterator[str]:
    """What a form field's range cell gets wrong, tried on parse_params: the accepted values of a switch or a
    choice (each one accepted), at most `n` characters of a text, or `low` 到 `high` of a number (大於 `low`:
    low itself refused)."""
    values = INLINE_CODE.findall(cell)
    if isinstance(default, bool) or default is None or (isinstance(default, str) and not values[0].isdigit()):
        yield from (f"{field}={v!r} is refused" for v in values if not accepted(field, v))
    elif isinstance(default, str):
        limit = int(values[0])
        if not accepted(field, "a" * limit) or accepted(field, "a" * (limit + 1)):
            yield f"{field}: not at most {limit} characters"
    else:
        low, high = (float(v) for v in values)
        step = 1 if isinstance(default, int) else 0.01
        if not accepted(field, f"{high:g}") or accepted(field, f"{high + step:g}"):
            yield f"{field}: the highest value is not {high:g}"
        open_low = "大於" in cell
        if accepted(field, f"{low:g}") is open_low or accepted(field, f"{low - step:g}"):
            yield f"{field}: the lowest value is not {'above ' if open_low else ''}{low:g}"


def test_the_form_fields_defaults_and_ranges_are_the_codes() -> None:
    defaults = parse_params({}, Settings.model_construct())
    rows = [row for header, rows in tables(SERVICE_GUIDE) if header[:3] == ["欄位", "預設值", "範圍"] for row in rows]
    assert len(rows) >= 10
    problems = []
    for row in rows:
        field = row[0].strip("`")
        if field == "file":
            continue
        if not hasattr(defaults, field):
            problems.append(f"{field}: not a parameter")
            continue
        actual = getattr(defaults, field)
        if not row[1].startswith("見") and (problem := default_problem(row[1], actual)):
            problems.append(f"{field}: {problem}")
        if INLINE_CODE.search(row[2]):
            problems += range_problems(field, row[2], actual)
    assert not problems, "\n".join(problems)
    assert list(range_problems("segment_duration", "`1` 到 `300`", 60.0)) == [
        "segment_duration: the highest value is not 300"]


def test_the_listed_languages_are_accepted() -> None:
    line = next(line for _, line in guide(SERVICE_GUIDE).prose if line.startswith("`language` 可用的代碼"))
    start = guide(SERVICE_GUIDE).text.index(line)
    codes = INLINE_CODE.findall(guide(SERVICE_GUIDE).text[start:].split("\n\n")[0])[1:]
    assert len(codes) == 24
    assert [c for c in codes if not accepted("language", c)] == []


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_the_compose_snippets_are_the_compose_files() -> None:
    services = compose()["services"]
    shown = [yaml.safe_load(b.text) for b in guide(SERVICE_GUIDE).blocks if b.lang == "yaml"]
    awq = next(s["qwen2.5-omni-http-awq"] for s in shown if "qwen2.5-omni-http-awq" in s)
    assert awq["ports"] == services["qwen2.5-omni-http-awq"]["ports"]
    assert awq["command"] == services["qwen2.5-omni-http-awq"]["command"]
    commands = [s["command"] for s in shown if "command" in s] + [awq["command"]]
    for command in commands:  # what a compose file may run: the server with flags it accepts
        args = command[command.index(SERVER_SCRIPT) + 1:]
        assert server_parse_error(args) is None, command
        Settings(**vars(build_parser().parse_args(args)))
    assert len(commands) >= 2


def test_the_profiles_table_is_the_compose_files() -> None:
    services = compose()["services"]
    rows = next(rows for header, rows in tables(SERVICE_GUIDE) if header[0] == "profile")
    assert {row[0].strip("`") for row in rows} == {p for s in services.values() for p in s.get("profiles", [])}
    for profile, names, port, model in rows:
        listed = INLINE_CODE.findall(names)
        assert {n for n, s in services.items() if profile.strip("`") in s.get("profiles", [])} == set(listed)
        first = services[listed[0]]
        assert first["ports"][0].split(":")[0] == port
        command = first["command"]
        assert command[command.index("--checkpoint-path") + 1] == INLINE_CODE.findall(model)[0]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(path: str) -> frozenset[str]:
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    return frozenset(slug(line.lstrip("#")) for line in lines if re.match(r"#{1,6} ", line))


@pytest.mark.parametrize("name", GUIDES)
def test_links_anchors_and_repository_paths_resolve(name: str) -> None:
    problems = []
    for number, line in guide(name).prose:
        for target in LINK.findall(line):
            if target.startswith("http"):
                continue
            path, _, anchor = target.partition("#")
            if not (ROOT / (path or name)).exists():
                problems.append(f"{name}:{number}: no file {path}")
            elif anchor and anchor not in anchors(path or name):
                problems.append(f"{name}:{number}: no heading #{anchor} in {path or name}")
    for where, span in inline_code(name):
        for word in span.split():
            if word.startswith(REPO_DIRS) and not (ROOT / word.split("#")[0]).exists():
                problems.append(f"{where}: no {word} in the repository")
    assert not problems, "\n".join(problems)
    assert slug(" 水平擴展：多張 GPU（Redis + RQ）") == "水平擴展多張-gpuredis--rq"


def test_the_file_tree_is_the_repositorys() -> None:
    tree = next(b for b in guide(SERVICE_GUIDE).blocks if b.lang == "text" and b.text.startswith("./"))
    parents: list[str] = []
    missing = []
    for line in tree.text.splitlines()[1:]:
        branch = line.find("── ")
        depth, name = branch // 4, line[branch + 3:].split("#")[0].strip()
        parents[depth:] = [name]
        if not (ROOT / "".join(parents)).exists():
            missing.append("".join(parents))
    assert not missing, missing
    assert len(tree.text.splitlines()) > 20


def test_environment_variables_exist() -> None:
    sources = " ".join(p.read_text(encoding="utf-8") for pattern in ("serve/**/*.py", "docker/*", "scripts/*.py")
                       for p in ROOT.glob(pattern) if p.is_file())
    sources += (ROOT / "docker-compose.yml").read_text(encoding="utf-8") + (ROOT / "Dockerfile").read_text("utf-8")
    unknown = {name for g in GUIDES for name in re.findall(ENV_PREFIX + r"[A-Z0-9_]+\b", guide(g).text)
               if name.removeprefix(ENV_PREFIX).lower() not in Settings.model_fields and name not in sources}
    assert not unknown, f"no such environment variables: {sorted(unknown)}"


# --- the examples, run against a real tiny server -------------------------------------------------------

RUNNABLE = {"curl", "echo", "grep", "sleep", "python -c"}
# Shell functions put before the examples: an HTTP error fails the example, and waiting loops are short.
SHELL_PRELUDE = """
curl() { command curl --silent --show-error --fail-with-body "$@"; }
sleep() { command sleep 0.1; }
"""


def runnable(block: Block) -> bool:
    """A shell example that only talks to the server (docker, installs and starts are left out)."""
    programs = {p for words in simple_commands(block.text) for p, _ in invocations(words)}
    return BASE_URL in block.text and programs <= RUNNABLE


def keys_problems(shown: object, real: object, path: str = "") -> Iterator[str]:
    """Fields of a JSON example that the real answer lacks (dicts by key, lists by their first item)."""
    if isinstance(shown, dict):
        if not isinstance(real, dict):
            yield f"{path or '.'} is not an object"
            return
        for key, value in shown.items():
            if key not in real:
                yield f"{path}.{key} is not in the answer"
            else:
                yield from keys_problems(value, real[key], f"{path}.{key}")
    elif isinstance(shown, list) and shown:
        if not (isinstance(real, list) and real):
            yield f"{path} is not a non-empty list"
        else:
            yield from keys_problems(shown[0], real[0], f"{path}[0]")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_awq_checkpoint: Path, tiny_aligner: Path) -> Iterator[Server]:
    with tiny_server(tmp_path_factory.mktemp("guide-zh"), tiny_awq_checkpoint, "--aligner-path",
                     str(tiny_aligner)) as server:
        yield server


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, audio_dir: Path) -> Path:
    """The reader's folder: the audio files the examples upload."""
    folder = tmp_path_factory.mktemp("reader")
    for name in ("audio.mp3", "long_audio.mp3", "meeting.mp3", "talk.mp3"):
        shutil.copy(audio_dir / "speech.mp3", folder / name)
    return folder


@pytest.mark.e2e
def test_the_shell_examples_run_and_answer_what_the_json_examples_show(server: Server, work: Path,
                                                                       url_map: Map) -> None:
    blocks = [b for b in shell_blocks(SERVICE_GUIDE) if runnable(b)]
    marker = "@@@ example "
    script = SHELL_PRELUDE + "".join(f"echo '{marker}{i}'\n{b.text.replace(BASE_URL, server.url)}"
                                     for i, b in enumerate(blocks))
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, capture_output=True, text=True,
                         timeout=180)
    outputs = run.stdout.split(marker)[1:]
    assert run.returncode == 0, f"{blocks[len(outputs) - 1].where} failed:\n{run.stderr}\n{outputs[-1]}"
    stdout = {b: out.split("\n", 1)[1] for b, out in zip(blocks, outputs, strict=True)}

    exercised = {getattr(route_of(url_map, m.group(1) or "/"), "rule", None) for b in blocks
                 for m in URL_PATH.finditer(b.text)}
    assert exercised >= {"/health", "/transcribe/json", "/transcribe", "/transcribe/srt", "/transcribe/vtt",
                         "/transcribe/async", "/status/<job_id>", "/result/<job_id>", "/jobs",
                         "/v1/audio/transcriptions", "/v1/models", "/metrics"}
    assert (work / "audio.txt").is_file() and (work / "subtitle.srt").read_text().startswith("1\n")

    all_blocks = guide(SERVICE_GUIDE).blocks
    examples = [(all_blocks[i - 1], b) for i, b in enumerate(all_blocks) if b.lang == "json"]
    assert len(examples) >= 5
    problems = []
    for before, example in examples:
        if before not in stdout:
            problems.append(f"{example.where}: a JSON example must follow the example that answers it")
            continue
        real = json.loads(stdout[before].strip().splitlines()[-1])
        problems += [f"{example.where}: {p}" for p in keys_problems(json.loads(example.text), real)]
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
def test_the_python_examples_run(server: Server, work: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    examples = [b for b in guide(SERVICE_GUIDE).blocks if b.lang == "python" and BASE_URL in b.text]
    assert len(examples) >= 3
    monkeypatch.chdir(work)
    for block in examples:
        exec(compile(block.text.replace(BASE_URL, server.url), block.where, "exec"), {"__name__": "__guide__"})
    assert "Transcription: " in capsys.readouterr().out


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js for the JavaScript example")
def test_the_javascript_example_runs(server: Server, work: Path) -> None:
    (example,) = [b for b in guide(SERVICE_GUIDE).blocks if b.lang == "javascript"]
    # What the browser page would have: a file input holding audio.mp3
    page = "const fileInput = { files: [new Blob([require('fs').readFileSync('audio.mp3')])] };\n"
    run = subprocess.run(["node", "-e", page + example.text.replace(BASE_URL, server.url)], cwd=work,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and not run.stderr, run.stderr
    assert run.stdout.startswith("Transcription: ") and run.stdout != "Transcription: undefined\n"
