"""YAML syntax errors in plain words, at the line to fix, with PyYAML's words after them."""

from __future__ import annotations

import pytest

from relay import config
from relay.errors import ConfigError

INDENT = "inconsistent indentation: this line is indented differently from the keys or list" \
         " items above it"
DEEPER = "inconsistent indentation: this line is indented deeper than the key above it, which" \
         " already has a value"
TAB = "a tab character: YAML indents with spaces only (PyYAML: found character '\\t' that" \
      " cannot start any token, while scanning for the next token)"
QUOTE = "unclosed quote: the string that starts on this line never ends (PyYAML: found" \
        " unexpected end of stream, while scanning a quoted scalar)"
COLON = "missing colon: a key on this line needs a ':' after it"
VALUES = "(PyYAML: mapping values are not allowed here)"

CASES = [
    # It said "inconsistent indentation", though the line was indented as it should be.
    ("text after an unquoted template", "server:\n  tokens: [t]\nroutes:\n  - receivers: [log]\n"
     "    title: {{ delivery_id }} cancelled\n",
     "5: invalid YAML: text after a value that starts with {: YAML ends the value at its"
     ' closing }; put the whole value in quotes: "{{ x }} and more" (PyYAML: expected <block'
     " end>, but found '<scalar>', while parsing a block mapping that starts on line 4)"),
    ("text after a quoted value", "server:\n  tokens: [t]\nroutes:\n  - receivers: [log]\n"
     '    title: "Delivery" {{ delivery_id }}\n',
     '5: invalid YAML: text after a value that starts with ": YAML ends the value at its'
     " closing quote; put the whole value in single quotes (PyYAML: expected <block end>, but"
     " found '{', while parsing a block mapping that starts on line 4)"),
    ("deeper key", "server:\n  tokens: [t]\n   path: /x\n",
     f"3: invalid YAML: {INDENT} (PyYAML: expected <block end>, but found '<block mapping"
     " start>', while parsing a block mapping that starts on line 2)"),
    ("shallower key", "server:\n    tokens: [t]\n  path: /x\n",
     f"3: invalid YAML: {INDENT} (PyYAML: expected <block end>, but found '<block mapping"
     " start>', while parsing a block mapping that starts on line 1)"),
    ("key under a list item", "receivers:\n  - name: log\n     urls: [x]\n",
     f"3: invalid YAML: {DEEPER} {VALUES}"),
    ("key outside a list item", "receivers:\n  - name: a\n  name: b\n",
     f"3: invalid YAML: {INDENT} (PyYAML: expected <block end>, but found '?', while parsing a"
     " block collection that starts on line 2)"),
    ("tab indent", "server:\n\ttokens: [t]\n", f"2: invalid YAML: {TAB}"),
    ("tab after a colon", "server:\n  path: /x\n  tokens:\t[t]\n", f"3: invalid YAML: {TAB}"),
    ("unclosed double quote", 'server:\n  tokens: ["t]\nreceivers: []\n',
     f"2: invalid YAML: {QUOTE}"),
    ("unclosed single quote", "server:\n  path: '/x\n  tokens: [t]\nreceivers: []\n",
     f"2: invalid YAML: {QUOTE}"),
    ("section without colon", "server\n  tokens: [t]\n", f"1: invalid YAML: {COLON} {VALUES}"),
    ("key without colon", "server:\n  tokens [t]\n  path: /x\n",
     f"2: invalid YAML: {COLON} {VALUES}"),
    ("last key without colon", "server:\n  path: /x\n  tokens\n",
     f"3: invalid YAML: {COLON} (PyYAML: could not find expected ':', while scanning a simple"
     " key)"),
    ("unclosed list", 'server:\n  tokens: ["t0ken"\nreceivers:\n  - name: log\n',
     "2: invalid YAML: unclosed [: the [ on this line needs a matching ], or a comma is missing"
     " between its items (PyYAML: expected ',' or ']', but got '<scalar>', while parsing a"
     " flow sequence)"),
    ("unclosed mapping", "routes:\n  - match: {event: x\n    receivers: [a]\n",
     "2: invalid YAML: unclosed {: the { on this line needs a matching }, or a comma is missing"
     " between its items (PyYAML: expected ',' or '}', but got ':', while parsing a flow"
     " mapping)"),
    # Open at the end of the file: PyYAML gave up on a line past the last one, in its own
    # words only.
    ("list open at the end", "server:\n  tokens: [t]\nreceivers: [\n",
     "3: invalid YAML: unclosed [: the [ on this line needs a matching ], or a comma is missing"
     " between its items (PyYAML: expected the node content, but found '<stream end>', while"
     " parsing a flow node)"),
    ("mapping open at the end, a comment after", "server:\n  tokens: [t]  # [x]\n"
     "default_receiver: 'a[b'\nroutes:\n  - match: {event: [x, y],\n\n# the end\n",
     "5: invalid YAML: unclosed {: the { on this line needs a matching }, or a comma is missing"
     " between its items (PyYAML: expected the node content, but found '<stream end>', while"
     " parsing a flow node)"),
    ("colon in a value", "server:\n  path: a: b\n",
     f"2: invalid YAML: a colon followed by a space inside a value: put the value in quotes"
     f" {VALUES}"),
    ("a control character", "server:\n  path: /x\n  tokens: [t\x00]\n",
     "3: invalid YAML: a control character (U+0000) that YAML does not allow: remove it"),
    ("an escape character", "server:\n  tokens: [\x1b[31mt]\n",
     "2: invalid YAML: a control character (U+001B) that YAML does not allow: remove it"),
    ("two documents", "server:\n  tokens: [t]\n---\nreceivers: []\n",
     "3: invalid YAML: a second document: the config is one YAML document, and this --- starts"
     " another: remove that line, so that what follows is part of the first (PyYAML: but found"
     " another document, expected a single document in the stream that starts on line 1)"),
    ("undefined alias, never echoed", "server:\n  tokens: [*S3cretT0ken]\n",
     "2: invalid YAML: a value that starts with * names an anchor (&name) that is not defined:"
     " put the value in quotes (PyYAML: found undefined alias)"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_yaml_mistake_is_named_in_plain_words_at_its_line(text, message):
    with pytest.raises(ConfigError) as e:
        config.loads(text, "c.yaml", {})
    assert [str(i) for i in e.value.issues] == [f"c.yaml:{message}"]


HEAD = "server:\n  tokens: [t]\nreceivers:\n  - {name: log, urls: ['console://']}\n" \
       "routes:\n  - receivers: [log]\n"


def load_issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config.loads(text, "c.yaml", {})
    return [str(i) for i in e.value.issues]


def test_an_unquoted_template_says_to_quote_it_once():
    """`{{ x }}` unquoted is a mapping whose key is a mapping: one line says to quote it (a
    second, "a key must be a name", came from reading the file and told the operator nothing)."""
    assert load_issues(HEAD + "    title: {{ x }}\n") == [
        'c.yaml:7: routes[0].title: a value that starts with "{" must be in quotes: unquoted'
        ' {{ ... }} is read by YAML as a mapping (write title: "{{ ... }}")']


def test_an_unquoted_template_under_template_says_what_template_takes():
    assert load_issues(HEAD + "    template: {{ x }}\n") == [
        "c.yaml:7: routes[0].template: template names a template from templates:, and unquoted"
        " {{ ... }} is read by YAML as a mapping: write an inline template as title: and body: on"
        ' the route, in quotes (body: "{{ ... }}")']


def test_an_unquoted_template_in_a_list_or_matcher_is_one_line_too():
    assert load_issues(HEAD + "    match: {status: {{ s }}}\n") == [
        'c.yaml:7: routes[0].match.status: a value that starts with "{" must be in quotes:'
        ' unquoted {{ ... }} is read by YAML as a mapping (write status: "{{ ... }}")']


def test_braces_where_text_belongs_keep_the_quotes_hint():
    assert load_issues(HEAD + "    title: {x}\n") == [
        'c.yaml:7: routes[0].title: expected a string, got a mapping (a value that starts with'
        ' "{" must be in quotes)']


def test_an_inline_template_under_template_is_told_where_it_goes():
    """No "{" was written: the quotes hint was wrong here."""
    assert load_issues(HEAD + "    template:\n      body: \"{{ delivery_id }}\"\n") == [
        "c.yaml:7: routes[0].template: expected a string, got a mapping (template names a"
        " template from templates:; an inline template is title: and body: on the route"
        " itself)"]


def test_indented_lines_under_a_text_key_are_named_as_the_mapping_they_make():
    assert load_issues(HEAD + "    title:\n      en: Delivered\n") == [
        "c.yaml:7: routes[0].title: expected a string, got a mapping (the key: value lines"
        " indented under it make a mapping: write the text itself, after the colon or as a |"
        " block)"]
