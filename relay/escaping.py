"""How a payload value is made inert for the channel it is rendered for, and the `Channel`.

A `Channel` is what the relay knows of one receiver URL (built by `relay.notify`
from Apprise's plugin): its scheme, limits and what it renders each template
format as; never the URL itself.

Payload values are data: whatever a value holds must reach the channel as
the text it is, never as markup, a link, a mention or a terminal command.
The operator's own template text is not touched (it keeps its formatting);
only what `{{ ... }}` prints passes through `Escaping.apply`.

Per channel, what Apprise does with the body decides what is needed:

- a `markdown` body that the channel renders as markdown or converts to HTML
  (email, Matrix, Slack, Discord, Telegram …): the marks that make markup in
  a value are backslash-escaped (CommonMark allows it, Apprise's
  markdown-to-HTML and each plugin's dialect converter honour it), so `[x](u)`,
  `<img>`, `**` and `# ` stay literal text;
- an `html` body: values are HTML-escaped;
- a `text` body: Apprise itself escapes it for HTML and markdown channels;
- chat channels: mention syntax is broken with a zero-width space (see
  MENTION_SCHEMES for which plugin pings on what);
- always: terminal escape sequences and other control characters are
  removed; a single-line field (a title, an email subject) also loses line
  breaks and tabs.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

ZWSP = "\u200b"

# Checked against Apprise 2.3's plugin sources (see docs/architecture.md, "Mentions").
MENTION_SCHEMES = frozenset({
    "slack", "discord", "matrix", "matrixs", "tgram", "mmost", "mmosts", "rocket", "rockets",
    "zulip", "msteams", "workflow", "workflows", "gchat", "guilded", "revolt", "ryver",
    "wxteams", "webex", "mastodon", "mastodons", "toot", "toots", "misskey", "misskeys",
    "bsky", "bluesky", "nctalk", "nctalks", "kook", "fluxer", "fluxers", "lark", "feishu",
    "wecombot", "dingtalk", "twist", "flock", "cliq", "zcliq", "zohocliq", "humhub", "humhubs",
    "stackfield",
})
# `@name`/`@room`/`@everyone` (most chats), `<!channel>` (Slack), `<at>` (Teams
# workflows, Lark/Feishu), `<users/all>` (Google Chat), `(met)all(met)` (KOOK).
_MENTION = re.compile(r"@|<(?=!|at\b|users/)|\((?=met\))", re.IGNORECASE)

# ESC-introduced sequences (CSI, OSC, and two-byte ones) go whole, not just their ESC.
_TERMINAL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_]?)"
                       r"|\x9b[0-?]*[ -/]*[@-~]?")
# C0 (but tab and newline), DEL, C1, and the bidirectional overrides that reorder text.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_BREAKS = re.compile("[\t\n\u2028\u2029]+")
# What makes markup in CommonMark and the chat dialects (links and images need `[`,
# raw HTML and autolinks `<`); list and heading markers only change layout.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>~|#])")


@dataclass(frozen=True)
class Escaping:
    mentions: bool = False
    markdown: bool = False
    html: bool = False
    single_line: bool = False

    def apply(self, text: str) -> str:
        text = strip_controls(text, self.single_line)
        if self.mentions:
            text = _MENTION.sub(lambda m: m.group(0) + ZWSP, text)
        if self.markdown:
            text = _MARKDOWN.sub(r"\\\1", text)
        if self.html:
            text = html.escape(text)
        return text


def strip_controls(text: str, single_line: bool = False) -> str:
    """Remove terminal sequences and control characters; `single_line` folds line breaks too."""
    text = _CONTROL.sub("", _TERMINAL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")))
    return _BREAKS.sub(" ", text) if single_line else text


@dataclass(frozen=True)
class Channel:
    """What the pipeline needs to know about one receiver URL (never the URL itself)."""

    scheme: str
    label: str  # redacted, for display
    body_max: int
    title_max: int
    # (template format, what the plugin renders it as), from Apprise's `resolve_format`
    resolves: tuple[tuple[str, str], ...] = ()
    title_in_body: bool = False  # Apprise sends "title\r\nbody" as one text

    def renders_as(self, template_format: str) -> str:
        return dict(self.resolves).get(template_format, template_format)


NO_CHANNEL = Channel("", "", 0, 0)


def for_channel(scheme: str, template_format: str, channel_format: str,
                title_in_body: bool) -> tuple[Escaping, Escaping]:
    """(title, body) escaping for a template format sent to a channel that renders it as
    `channel_format` (what Apprise resolves the template format to for that plugin)."""
    mentions = scheme in MENTION_SCHEMES
    markdown = template_format == "markdown" and channel_format in ("markdown", "html")
    as_html = template_format == "html"
    body = Escaping(mentions, markdown, as_html)
    # Apprise converts a title only where it is sent as part of the body.
    title = Escaping(mentions, markdown and title_in_body, as_html and title_in_body, True)
    return title, body
