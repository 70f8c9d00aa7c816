"""The docs tell the truth: every flag a doc names exists, every flag is documented, the README's figures are the
recorded results', every link resolves, and the docs speak to users about the project only.

Docs: README.md, docs/*.md, benchmarks/RESULTS.md and the model cards (src/refconv/weights/**/*.md). The
parsers are built in-process from ``refconv.cli.build_parser`` (a subprocess ``--help`` per command costs seconds
of torch import each).

A flag is *named for a command* where a doc writes ``refconv CMD ... --flag`` (a line of a code block, joined over
``\\`` continuations, or an inline code span). A flag is *documented for a command* when it is named for it, or
appears in a doc section whose heading names ``refconv CMD`` (the section runs to the next heading of the same
or a higher level); ``--no-X`` and ``--X`` document each other (``booleans also take --no-…``).
"""

from __future__ import annotations

import argparse
import json
import re
from functools import lru_cache
from pathlib import Path

import pytest

import refconv
from refconv.cli import COMMANDS, build_parser
from refconv.models import pretrained as reg

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "refconv" / "weights"


def _doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
    return files + sorted(WEIGHTS.rglob("*.md"))


DOCS = _doc_files()
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")
# `refconv CMD` in all its spellings: the console script, `python -m refconv.cli CMD`, `torchrun ... -m refconv.cli CMD`
COMMAND = re.compile(r"(?<![\w./-])(?:refconv|refconv\.cli)\s+(" + "|".join(sorted(map(re.escape, COMMANDS),
                                                                                      key=len, reverse=True)) + r")(?![\w-])")
# where a command line ends inside a code line: a shell comment, another command, a pipe
_END = re.compile(r"\s#\s|&&|\|\||;|\s\|\s")


# --------------------------------------------------------------------------------------------- the parsers
@lru_cache(maxsize=1)
def cli_flags() -> dict[str, set[str]]:
    """Every command's long flags (``--help`` left out); ``"pretrained publish"`` etc. for nested commands (the
    flags they add to their parent's)."""
    parser = build_parser("*")
    out: dict[str, set[str]] = {}

    def flags(p: argparse.ArgumentParser) -> set[str]:
        return {o for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--help"}

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub._name_parser_map.items():
        out[name] = flags(p)
        for nested in (a for a in p._actions if isinstance(a, argparse._SubParsersAction)):
            for sub_name, sp in nested._name_parser_map.items():
                out[f"{name} {sub_name}"] = flags(sp) - out[name]  # its own: the parent's are the parent's
    return out


def _known(command: str, words: list[str]) -> set[str]:
    """The flags a ``refconv COMMAND words...`` line may use (a nested command's when the first word names one)."""
    table = cli_flags()
    if words and f"{command} {words[0]}" in table:
        return table[f"{command} {words[0]}"] | table[command]
    nested = {k for k in table if k.startswith(command + " ")}
    return table[command].union(*(table[k] for k in nested)) if nested else table[command]


# --------------------------------------------------------------------------------------------- the docs
def _blocks(text: str) -> list[tuple[bool, str]]:
    """``(is_code, chunk)`` pieces of a Markdown text: fenced blocks are code, the rest prose."""
    out, code, buf = [], False, []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            out.append((code, "\n".join(buf)))
            code, buf = not code, []
            continue
        buf.append(line)
    out.append((code, "\n".join(buf)))
    return out


def command_spans(text: str) -> list[tuple[str, str]]:
    """``(command, the rest of its command line)`` for every ``refconv CMD ...`` a doc writes."""
    spans: list[tuple[str, str]] = []

    def add(line: str) -> None:
        for m in COMMAND.finditer(line):
            rest = line[m.end():]
            nxt = COMMAND.search(rest)
            rest = rest[: nxt.start()] if nxt else rest
            end = _END.search(rest)
            spans.append((m.group(1), (rest[: end.start()] if end else rest).strip()))

    for is_code, chunk in _blocks(text):
        if is_code:
            for line in re.sub(r"\\\n\s*", " ", chunk).splitlines():
                add(line)
        else:
            joined = re.sub(r"\n(?!\n)", " ", chunk)  # an inline code span may wrap over lines
            for code in re.findall(r"`([^`]+)`", joined):
                add(code)
            for line in chunk.splitlines():  # indented code blocks (4 spaces)
                if line.startswith("    ") and not line.lstrip().startswith(("-", "*", "|")):
                    add(line)
    return spans


def _flags_in(text: str) -> set[str]:
    return {"--" + f for f in FLAG.findall(text)}


def sections(text: str) -> list[tuple[set[str], str]]:
    """``(commands the heading names, section text up to the next heading of the same or a higher level)``."""
    lines = text.splitlines()
    heads = []
    in_code = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            heads.append((i, len(line.split(" ", 1)[0]), line))
    out = []
    for j, (i, level, line) in enumerate(heads):
        end = next((k for k, lv, _ in heads[j + 1:] if lv <= level), len(lines))
        named = {m.group(1) for m in COMMAND.finditer(line)}
        if named:  # `refconv train | eval | fold`, "`refconv train` has, `detect` and `segment` have": all of them
            named |= {w for w in re.findall(r"[\w-]+", " ".join(re.findall(r"`([^`]+)`", line))) if w in COMMANDS}
        if named:
            out.append((named, "\n".join(lines[i:end])))
    return out


def _texts() -> dict[Path, str]:
    return {p: p.read_text() for p in DOCS}


def _same_boolean(flag: str) -> set[str]:
    return {flag, "--no-" + flag[2:]} if not flag.startswith("--no-") else {flag, "--" + flag[5:]}


# --------------------------------------------------------------------------------------------- flags
def test_every_flag_a_doc_names_exists():
    wrong = []
    for path, text in _texts().items():
        for command, rest in command_spans(text):
            words = rest.split()
            known = _known(command, words)
            for flag in sorted(_flags_in(rest)):
                if flag not in known and flag != "--help":
                    wrong.append(f"{path.relative_to(ROOT)}: `refconv {command} ... {flag}`: {flag} is not a flag "
                                 f"of refconv {command}")
    assert not wrong, f"{len(wrong)} flags in the docs do not exist:\n" + "\n".join(sorted(set(wrong)))


def documented_flags() -> dict[str, set[str]]:
    """The flags each command has documented somewhere (see the module docstring)."""
    documented: dict[str, set[str]] = {c: set() for c in cli_flags()}
    for text in _texts().values():
        for command, rest in command_spans(text):
            words = rest.split()
            key = f"{command} {words[0]}" if words and f"{command} {words[0]}" in documented else command
            documented[key] |= _flags_in(rest)
            documented[command] |= _flags_in(rest) & cli_flags()[command]  # the parent's flags, given after it
        for named, body in sections(text):
            for command in named:
                for key in documented:
                    if key == command or key.startswith(command + " "):
                        documented[key] |= _flags_in(body)
    return documented


def test_every_flag_of_every_command_is_documented():
    documented = documented_flags()
    missing = {}
    for command, flags in sorted(cli_flags().items()):
        own = documented[command]
        if " " in command:  # a nested command's flags may be documented for it or for its parent
            own = own | documented[command.split()[0]]
        lacking = sorted(f for f in flags if not (_same_boolean(f) & own))
        if lacking:
            missing[command] = lacking
    listing = "\n".join(f"  refconv {c}: {' '.join(fl)}" for c, fl in missing.items())
    assert not missing, ("flags no doc mentions (add them to the command's section, e.g. docs/engine.md's table "
                         f"for train):\n{listing}")


def test_the_flag_parsers_of_this_test_see_what_they_should():
    """The doc parser itself: a span ends at a comment or the next command, sections follow heading levels."""
    text = ("# `refconv demo`\n\n`refconv demo --seeds 2` and\n\n```bash\nrefconv train --model m \\\n"
            "    --epochs 3   # not --comment\nrefconv eval --weights w && refconv fold r --onnx\n```\n\n"
            "## sub\n--start here\n# other\n--elsewhere\n")
    spans = command_spans(text)
    assert ("demo", "--seeds 2") in spans and ("fold", "r --onnx") in spans
    assert [s.split() for c, s in spans if c == "train"] == [["--model", "m", "--epochs", "3"]]
    assert [s for c, s in spans if c == "eval"] == ["--weights w"]
    (named, body), = sections(text)
    assert named == {"demo"} and "--start" in body and "--elsewhere" not in body


# --------------------------------------------------------------------------------------------- links
def test_every_relative_link_resolves():
    broken = []
    for path, text in _texts().items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve()
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md":
                slugs = {re.sub(r"[^\w\- ]", "", h.strip("# ").lower()).replace(" ", "-")
                         for h in dest.read_text().splitlines() if re.match(r"#{1,6} ", h)}
                if anchor not in slugs:
                    broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


# --------------------------------------------------------------------------------------------- the docs speak to users
OUTSIDE = [
    (re.compile(r"\bissues?\b", re.I), "the project's issue tracker"),
    (re.compile(r"\bthis session\b", re.I), "a working session"),
    (re.compile(r"REFCONV\.md"), "a file that is not in the repository"),
    (re.compile(r"\bcarry\b.*runs/|FILES_AT|\$OUT\b|device tool", re.I), "a remote-machine tool"),
]


def test_docs_speak_of_the_project_and_its_users_only():
    found = []
    for path, text in _texts().items():
        for i, line in enumerate(text.splitlines(), 1):
            for pattern, what in OUTSIDE:
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{i}: {what}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------------------------- figures
def _card(name: str) -> dict:
    return json.loads((WEIGHTS / f"{name}.json").read_text())


def _study(start: str) -> dict:
    return json.loads((ROOT / "docs/results/pretrained-study" / start / "baseline-eval.json").read_text())


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


@pytest.mark.parametrize("name", sorted(reg.ENTRIES))
def test_shipped_cards_are_what_publish_writes_and_their_use_block_runs_the_recipe(name):
    from refconv.engine.publish import _markdown

    card = _card(name)
    md = (WEIGHTS / f"{name}.md").read_text()
    assert md == _markdown(card, plotted=(WEIGHTS / f"{name}.png").is_file())
    use = md.split("## Use", 1)[1].split("## ", 1)[0]
    assert reg.ENTRIES[name].refconv_command() in use
    assert f"--config {reg.ENTRIES[name].recipe}" in reg.ENTRIES[name].refconv_command()


def test_readme_figures_of_the_shipped_models_are_their_cards():
    text = _readme()
    for name in ("fmnist/mobilenetv3_small_100", "fmnist/mobilenetv3_small_100_e2", "fmnist/shufflenet_v2_x1_0"):
        card = _card(name)
        assert f"{card['test_top1']:.2f} %" in text, (name, card["test_top1"])
    mnv3, snap, shuffle = (_card(n) for n in ("fmnist/mobilenetv3_small_100", "fmnist/mobilenetv3_small_100_e2",
                                              "fmnist/shufflenet_v2_x1_0"))
    assert f"after {mnv3['epochs']} epochs of its recipe ({mnv3['wall_time_s'] / 60:.0f} min" in text
    assert f"raised the best test top-1 by {mnv3['plateau']['gain_pt']:+.2f} pt" in text
    assert f"{snap['snapshot']['epoch']} snapshot" in text or f"epoch-{snap['snapshot']['epoch']} snapshot" in text
    assert f"reaches **{shuffle['test_top1']:.2f} %** after the {shuffle['epochs']} epochs of its recipe" in text
    assert f"+{shuffle['plateau']['gain_pt']:.2f} pt over the last {shuffle['plateau']['last_epochs']} epochs" in text
    assert f"best {shuffle['best']['top1']:.2f} % at epoch {shuffle['best']['epoch']}" in text


def test_readme_study_starts_are_the_recorded_evaluations_and_say_on_what():
    """The study scores its starts on its own 5,000 test images, the cards on all 10,000: both numbers appear,
    each said to be what it is."""
    text = _readme()
    for start, card in (("converged", "fmnist/mobilenetv3_small_100"), ("undertrained", "fmnist/mobilenetv3_small_100_e2")):
        got = _study(start)["final"]
        images = round(got["correct1"] / got["top1"] * 100)
        assert images == 5000 and f"{got['top1']:.2f} %" in text, (start, got)
        assert f"{_card(card)['test_top1']:.2f} %" in text
    assert "5,000 test images" in text and "full Fashion-MNIST test set" in text


def test_engine_fold_tolerance_in_the_docs_is_the_code_s():
    from refconv.engine.artifacts import FOLD_REL_TOL

    for doc in ("docs/engine.md", "docs/downstream.md"):
        text = re.sub(r"\s+", " ", (ROOT / doc).read_text())
        stated = re.findall(r"FOLD_REL_TOL`? = ([0-9.e-]+)", text) + re.findall(r"below ([0-9.e-]+) or the run fails", text)
        assert stated and all(float(s) == FOLD_REL_TOL for s in stated), (doc, stated, FOLD_REL_TOL)


def test_error_messages_that_name_an_api_call_name_its_real_parameters():
    import inspect

    from torch import nn

    with pytest.raises(refconv.RefConvError) as info:
        refconv.convert(nn.Conv2d(4, 4, 3), groups=3)
    msg = str(info.value)
    call = re.search(r"refconv\.capped_groups\(([^)]*)\)", msg)
    assert call, msg
    named = [a.strip() for a in call.group(1).split(",")]
    params = list(inspect.signature(refconv.capped_groups).parameters)
    assert len(named) == len(params) and named[1:] == params[1:], (named, params)


def test_readme_demo_time_is_the_recorded_one():
    results = re.sub(r"\s+", " ", (ROOT / "benchmarks" / "RESULTS.md").read_text())
    row = re.search(r"\(current profile\) \|[^|]*\| \*\*(\d+ min \d+ s)\*\* \|", results)
    assert row, "benchmarks/RESULTS.md: the Demo wall time table lost the current profile's row"
    assert f"`refconv demo --profile quick` from the shipped converged MobileNetV3-Small. It took {row.group(1)}" in _readme()


def test_readme_training_speed_figures_are_the_benchmark_s():
    paragraph = re.search(r"Training speed: .*?(?= ## )", _readme()).group(0)
    figures = re.findall(r"\d+(?:\.\d+)?-\d+(?:\.\d+)?x?|\d+ MB", paragraph)
    assert len(figures) >= 4, figures
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert not [f for f in figures if f.rstrip("x") not in results], figures


# --------------------------------------------------------------------------------------------- API in the docs
def _resolve(dotted: str):
    """What ``dotted`` names as a user reaches it: attributes first (``refconv.convert`` is the function the
    package exports, not the module of the same name), a submodule where no attribute is."""
    import importlib

    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, attr in enumerate(parts[1:], 1):
        obj = getattr(obj, attr) if hasattr(obj, attr) else importlib.import_module(".".join(parts[: i + 1]))
    return obj


def api_mentions() -> list[tuple[str, str, str]]:
    """``(doc, dotted name, what is inside the parentheses)`` for every `` `refconv.x.y(...)` `` the docs write."""
    out = []
    for path, text in _texts().items():
        for name, args in re.findall(r"`(refconv(?:\.\w+)+)\(([^`]*)\)`", re.sub(r"\n\s*", " ", text)):
            out.append((str(path.relative_to(ROOT)), name, args))
    return out


def test_api_signatures_and_calls_in_the_docs_match_the_code():
    """A written signature (``f(model, *, map_k=3)``) equals the function's: names, keyword-only marker, defaults;
    a written call (``f(arch, num_classes, pretrained_layout=True)``) binds to it."""
    import ast
    import inspect

    wrong = []
    mentions = api_mentions()
    assert len(mentions) >= 5
    for doc, name, args in mentions:
        sig = inspect.signature(_resolve(name))
        if args.strip() in ("", "..."):
            continue
        items = [a.strip() for a in args.split(",")]
        if "*" in items:  # a signature
            params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
            written, kw_only = [], False
            for item in items:
                if item == "*":
                    kw_only = True
                    continue
                pname, _, default = item.partition("=")
                written.append((pname.strip(), kw_only, ast.literal_eval(default) if default else inspect._empty))
            actual = [(p.name, p.kind is p.KEYWORD_ONLY, p.default) for p in params]
            if written != actual:
                wrong.append(f"{doc}: {name}({args}) but the code says {name}{sig}")
        else:  # a call
            call = ast.parse(f"f({args})", mode="eval").body
            if any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in call.args):
                continue
            try:
                sig.bind(*call.args, **{k.arg: None for k in call.keywords})
            except TypeError as exc:
                wrong.append(f"{doc}: {name}({args}) does not fit {name}{sig}: {exc}")
    assert not wrong, "\n".join(wrong)
