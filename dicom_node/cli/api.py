"""``llnm-node api-token``: admin API tokens."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError

from dicom_node.cli.common import fail


def api_token(
    name: Annotated[str, typer.Argument(help="Who holds the token (shown in the audit trail).")],
) -> None:
    """Make an admin API token: print it once, and the settings entry that admits it."""
    from dicom_node.api.auth import new_token, token_digest
    from dicom_node.settings import ApiToken

    token = new_token()
    try:
        entry = ApiToken(name=name, sha256=token_digest(token))
    except ValidationError as exc:
        raise fail("invalid name", exc, code=2) from exc
    typer.echo(f"token (shown only now): {token}")
    typer.echo("add to the settings file:")
    typer.echo(f'[[api.tokens]]\nname = {json.dumps(entry.name)}\nsha256 = "{entry.sha256}"')
