"""``llnm-node echo`` and ``send``: the node's SCU helpers for admins."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dicom_node.cli.common import JsonOption, console, err_console, fail, print_json
from dicom_node.network import scu

CalledAe = Annotated[str, typer.Option("--aec", help="Called AE title.")]
CallingAe = Annotated[str, typer.Option("--aet", help="Our (calling) AE title.")]
TlsCa = Annotated[
    Path | None, typer.Option("--tls-ca", help="Use TLS; verify the peer with this CA.")
]


def _peer(host: str, port: int, called_ae: str, calling_ae: str, tls_ca: Path | None) -> scu.Peer:
    from dicom_node.network.tls import client_context

    tls = client_context(ca_file=tls_ca) if tls_ca is not None else None
    return scu.Peer(host=host, port=port, called_ae=called_ae, calling_ae=calling_ae, tls=tls)


def echo(
    host: str,
    port: int,
    called_ae: CalledAe = "LLNM_NODE",
    calling_ae: CallingAe = "LLNM_SCU",
    tls_ca: TlsCa = None,
) -> None:
    """C-ECHO a DICOM peer."""
    try:
        status = scu.echo(_peer(host, port, called_ae, calling_ae, tls_ca))
    except scu.AssociationError as exc:
        raise fail("", exc) from exc
    console.print(f"C-ECHO status 0x{status:04X}")
    if status != 0:
        raise typer.Exit(1)


def send(
    host: str,
    port: int,
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders.")],
    called_ae: CalledAe = "LLNM_NODE",
    calling_ae: CallingAe = "LLNM_SCU",
    tls_ca: TlsCa = None,
    as_json: JsonOption = False,
) -> None:
    """C-STORE files (folders recursively) to a DICOM peer, bytes as stored."""
    outcomes = scu.send_files(_peer(host, port, called_ae, calling_ae, tls_ca), paths)
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        print_json(outcomes)
    else:
        for outcome in failed:
            status = "-" if outcome.status is None else f"0x{outcome.status:04X}"
            err_console.print(f"[red]{outcome.path}[/red]: {status} {outcome.error or ''}")
        console.print(f"sent {len(outcomes) - len(failed)} of {len(outcomes)} file(s)")
    if failed:
        raise typer.Exit(1)
