"""The docs say what the code does: every config key, working links, a config that passes check."""

from __future__ import annotations

import ast
import re
import sys

import click
import pytest
import yaml

from relay.cli import main
from relay.config import SCHEMAS, duration, loads
from relay.lifecycle import RESTART_KEYS
from relay.lint import lint
from relay.metrics import Metrics
from tests.conftest import ROOT

SECTIONS = {"": "", "server": "server.", "store": "store.", "sending": "sending.",
            "deliveries": "deliveries.", "retry": "sending.retry.", "circuit": "sending.circuit.",
            "receiver": "receivers[].", "route": "routes[].", "template": "",
            "watch": "watches[]."}


def test_every_config_key_is_in_the_configuration_reference():
    readme = (ROOT / "docs" / "configuration.md").read_text()
    missing = []
    for section, prefix in SECTIONS.items():
        for key in SCHEMAS[section]:
            if section == "template" or key in ("server", "store", "sending", "deliveries",
                                                "delivery", "receivers", "routes", "templates",
                                                "retry", "circuit", "watches"):
                needle = key  # sections are documented by their keys
            else:
                needle = f"`{prefix}{key}`"
            if needle not in readme:
                missing.append(prefix + key)
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_commented_receiver_examples_in_the_example_config_are_valid(tmp_path, monkeypatch):
    """Uncommenting the Slack, Discord, email and SMS examples (and the live route, which uses
    the Slack bot) gives a config that passes check: the bot's URL can edit."""

    text = (ROOT / "config.example.yaml").read_text()
    text = text.replace("\n  # - name:", "\n  - name:").replace("\n  #   ", "\n    ")
    path = tmp_path / "all-receivers.yaml"
    path.write_text(text)
    env = {"SLACK_URL": "slack://T0001/B0002/XXXXXXXX/#ops", "DISCORD_URL": "discord://1234/abcd",
           "SLACK_BOT_URL": "slack://xoxb-1-2-abcd/#ops",
           "SMTP_USER": "relay", "SMTP_PASSWORD": "pw",
           "TWILIO_SID": "AC0123456789abcdef0123456789abcdef", "TWILIO_TOKEN": "tok"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    issues = lint(str(path))
    assert [i for i in issues if i.severity == "error"] == []
    unused = sorted(i.message for i in issues)
    assert len(unused) == 4 and all("never used" in m for m in unused)


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"(?m)^#+ (.*)$", text)}


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.name)
def test_every_relative_link_in_the_docs_reaches_a_file_and_heading(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        missing_anchor = file.exists() and bool(anchor) and file.suffix == ".md" \
            and anchor not in _anchors(file.read_text())
        if not file.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_the_readme_is_a_front_page_and_the_reference_lives_in_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    for page in ("configuration", "webhook", "guarantees", "commands", "operations",
                 "container", "performance", "architecture", "watches"):
        assert f"docs/{page}.md" in readme, f"the README does not link docs/{page}.md"


NOISE_SECTIONS = {"digest": "digest.", "quiet_hours": "quiet_hours.",
                  "quiet_window": "quiet_hours.windows[]."}


def test_every_digest_and_quiet_hours_key_is_documented():
    text = (ROOT / "docs" / "configuration.md").read_text() \
        + (ROOT / "docs" / "less-noise.md").read_text()
    missing = [prefix + key for section, prefix in NOISE_SECTIONS.items()
               for key in SCHEMAS[section] if f"`{prefix}{key}`" not in text]
    assert not missing, f"docs/less-noise.md does not document: {missing}"


def _documented_defaults() -> list[tuple[str, str]]:
    """(key, default) of each row of the configuration table whose default is a value."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    return re.findall(r"^\| `([a-z_.]+|receivers\[\]\.[a-z_]+)` \| `([^`]+)` \|", text, re.M)


def _as_config_value(shown: str, actual: object) -> object:
    """A default as the table writes it (`10s`, `false`, `[0, 5s]`), as the config holds it."""
    if isinstance(actual, bool):
        return {"true": True, "false": False}.get(shown, shown)
    if isinstance(actual, tuple):
        return tuple(duration(v.strip()) for v in shown.strip("[]").split(","))
    if isinstance(actual, float):
        return duration(shown)
    if isinstance(actual, int):
        return int(shown)
    return shown


def test_every_default_in_the_configuration_table_is_the_relays_default():
    config = loads("server: {tokens: [t]}\nreceivers: [{name: r, urls: ['console://']}]\n"
                   "default_receiver: r\n", "c.yaml", {})
    rows = _documented_defaults()
    assert len(rows) > 20, "the configuration table lost its defaults column"
    wrong = []
    for key, shown in rows:
        if re.fullmatch(r"[a-z_]+\.[a-z_.]+", shown):
            continue  # another key's value (`sending.retry`)
        value: object = config
        for part in key.replace("receivers[]", "receivers.r").split("."):
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        if _as_config_value(shown, value) != value:
            wrong.append(f"{key}: the table says {shown}, the relay uses {value!r}")
    assert not wrong


def test_every_metric_is_in_the_operations_page():
    text = (ROOT / "docs" / "operations.md").read_text()
    names = {m.name for m in Metrics().registry.collect()}
    missing = sorted(n for n in names if n not in text and f"{n}_total" not in text
                     and f"{n}_info" not in text)
    assert names and not missing, f"docs/operations.md does not name: {missing}"


def test_every_command_option_is_in_the_commands_page():
    text = (ROOT / "docs" / "commands.md").read_text()
    missing = []
    todo: list[tuple[str, click.Command]] = list(main.commands.items())
    while todo:
        name, command = todo.pop()
        if isinstance(command, click.Group):
            todo += [(f"{name} {sub}", c) for sub, c in command.commands.items()]
            continue
        missing += [f"{name} {opt}" for p in command.params if isinstance(p, click.Option)
                    for opt in p.opts[-1:] if opt != "--help" and opt not in text]
    assert not missing, f"docs/commands.md does not mention: {sorted(missing)}"


def test_the_reload_section_names_every_setting_that_needs_a_restart():
    text = (ROOT / "docs" / "commands.md").read_text().split("## Reload", 1)[1]
    assert [k for k in RESTART_KEYS if f"`{k}`" not in text] == []


def _config_fragments() -> list[tuple[str, str]]:
    """Every ```yaml block of the README and docs/ that is made of config sections."""
    found = []
    for page in DOC_PAGES:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)):
            if set(yaml.safe_load(block)) <= set(SCHEMAS[""]):
                found.append((f"{page.name}#{i}", block))
    return found


FRAGMENT_BASE = {"server": {"tokens": ["t"]}, "templates": {},
                 "receivers": [{"name": "ops-chat", "urls": ["console://"]}]}
# What the `${VARS}` of the docs' examples hold in a real deployment.
FRAGMENT_ENV = {"SLACK_BOT_TOKEN": "xoxb-1-2-abcd", "DISCORD_WEBHOOK_ID": "1234",
                "DISCORD_WEBHOOK_TOKEN": "abcd", "TELEGRAM_BOT_TOKEN": "123456:ABCdef",
                "TELEGRAM_CHAT_ID": "-100123", "MATRIX_ACCESS_TOKEN": "syt_abc",
                "SMTP_USER": "relay", "SMTP_PASSWORD": "pw", "OPS_CHAT_URL": "console://",
                "KOURIER_ADMIN_TOKEN": "a", "KOURIER_VIEWER_TOKEN": "v"}


FRAGMENTS = _config_fragments()


@pytest.mark.parametrize("name, block", FRAGMENTS, ids=[name for name, _ in FRAGMENTS])
def test_a_config_example_in_the_docs_passes_check(tmp_path, monkeypatch, name, block):
    """Put into a config with a server section (and the receiver and template it names);
    a fragment without routes gets one to all its receivers, so none is unused."""
    fragment = yaml.safe_load(block)
    config = {**FRAGMENT_BASE, **{k: {**FRAGMENT_BASE[k], **v} if k == "server" else v
                                  for k, v in fragment.items()}}
    config.setdefault("routes", [{"receivers": [r["name"] for r in config["receivers"]]}])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    for key, value in FRAGMENT_ENV.items():
        monkeypatch.setenv(key, value)
    issues = [f"{i.severity}: {i.path}: {i.message}" for i in lint(str(path))]
    assert issues == [], name


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key written twice in one mapping is an error (the
    relay refuses it; PyYAML alone keeps the last value and hides the mistake)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        twice = sorted({k for k in keys if keys.count(k) > 1}, key=str)
        if twice:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {twice}",
                                                    node.start_mark)
        return super().construct_mapping(node, deep=deep)


YAML_BLOCKS = [(f"{page.name}#{i}", block) for page in DOC_PAGES
               for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S))]


@pytest.mark.parametrize("name, block", YAML_BLOCKS, ids=[name for name, _ in YAML_BLOCKS])
def test_a_yaml_example_in_the_docs_has_no_key_twice(name, block):
    """Any ```yaml block, config sections or a part of one (a `match:`): a reader pastes it."""
    yaml.load(block, Loader=_StrictLoader)


def _modules() -> set[str]:
    """relay's modules and packages (a package is one row of the table)."""
    relay = ROOT / "relay"
    return ({p.stem for p in relay.glob("*.py")} - {"__init__", "__main__"}) | \
        {p.parent.name for p in relay.glob("*/__init__.py")}


def _table_rows() -> dict[tuple[str, ...], set[str]]:
    """docs/architecture.md's module table: the relay modules of each row, and the names its
    imports column gives (what a parenthesis or "lazily, per command" says aside)."""
    modules = _modules()
    rows = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = line.split(" | ")
        if len(cells) != 3 or not cells[0].startswith("| `"):
            continue
        names = re.sub(r"\([^)]*\)|lazily|per command", "", cells[2].removesuffix(" |"))
        rows[tuple(m for m in re.findall(r"`(\w+)`", cells[0]) if m in modules)] = {
            n.strip(" `") for n in re.split(r"[,;]", names) if n.strip(" `–")}
    return rows


def _imports(module: str, lazily_too: bool = True) -> set[str]:
    """What a relay module (a package: all its files) imports, anywhere in its code or
    (`lazily_too=False`) at module level: relay modules by name, other packages by their
    top-level name, not the standard library."""
    path = ROOT / "relay" / module
    found = set()
    for file in sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]:
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree) if lazily_too else tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                parts = node.module.split(".")
                found |= {a.name for a in node.names} if node.module == "relay" else \
                    {parts[1] if parts[0] == "relay" else parts[0]}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[a.name.startswith("relay.")] for a in node.names}
    return found - set(sys.stdlib_module_names) - {"__future__", "__version__", module}


def test_the_architecture_table_names_every_module_and_what_it_imports():
    rows, modules = _table_rows(), _modules()
    assert modules == {m for row in rows for m in row}
    wrong = {}
    for row, listed in rows.items():
        imported = set().union(*map(_imports, row)) - set(row)
        ours = {name for name in imported | listed if name in modules}
        if ours & imported != ours & listed or (listed - modules) - imported:
            wrong[row] = {"imported, not listed": sorted(imported - listed - (imported - modules)),
                          "listed, not imported": sorted(listed - imported)}
    assert not wrong, f"docs/architecture.md's imports column differs from the code: {wrong}"


def test_a_module_imports_at_load_only_the_modules_above_it_in_the_table():
    rows, modules = list(_table_rows()), _modules()
    above: set[str] = set()
    for row in rows:
        below = {m for m in set().union(*(_imports(m, lazily_too=False) for m in row))
                 if m in modules} - set(row) - above
        assert not below, f"{row} imports {sorted(below)}, listed below it in docs/architecture.md"
        above |= set(row)
