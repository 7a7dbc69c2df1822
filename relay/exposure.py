"""What in a config leaves the relay open to more people than meant: tokens that are
shared between roles, and the example's public `change-me` token. Pure; never shows a
token (only which keys hold the same one).

`check` shows `shared_tokens` among its warnings; `serve` logs them and `example_token`
at start and after each reload. The example token is a fact of the environment the relay
runs in (`${KOURIER_WEBHOOK_TOKEN:-change-me}` with the variable unset), not of the file,
so `check` (which may run elsewhere) leaves it to `serve`.
"""

from __future__ import annotations

from relay.config import Config
from relay.errors import Issue

EXAMPLE_TOKEN = "change-me"  # config.example.yaml's default (and deploy/k8s's placeholder)


def shared_tokens(config: Config) -> list[Issue]:
    """The admin or viewer token equal to a webhook token, or the viewer token equal to the
    admin token: whoever holds one then has the other role's rights too."""
    server, issue = config.server, config.source.issue
    out = []
    if server.admin_token and server.admin_token in server.tokens:
        out.append(issue("server.admin_token", "is also a webhook token: whoever sends"
                         " webhooks may use the admin API too (replay, reload, every delivery's"
                         " timeline): give it a token of its own", "warning"))
    if server.viewer_token and server.viewer_token in server.tokens:
        out.append(issue("server.viewer_token", "is also a webhook token: whoever sends"
                         " webhooks may read the status page too: give it a token of its"
                         " own", "warning"))
    if server.viewer_token and server.viewer_token == server.admin_token:
        out.append(issue("server.viewer_token", "is the admin token: a viewer logs in as the"
                         " admin (and may replay): give it a token of its own", "warning"))
    return out


def example_token(config: Config) -> str:
    """What to say when a webhook token is the example's public placeholder ("" if none)."""
    places = [i for i, t in enumerate(config.server.tokens) if t.startswith(EXAMPLE_TOKEN)]
    if not places:
        return ""
    keys = config.server.token_keys  # an empty token before it is left out of `tokens`
    key = keys[places[0]] if len(keys) == len(config.server.tokens) else "server.tokens"
    variable = config.source.env.get(key)
    fix = (f"set {variable} to a long random token" if variable else
           "replace it with a long random token (better: ${VAR}, set where the relay runs)")
    return (f"{key} is {EXAMPLE_TOKEN}, the example's token: anyone"
            f" who has read the README can post events to this relay; {fix} (openssl rand"
            " -hex 32 makes one)")
