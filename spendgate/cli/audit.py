"""``spendgate audit …``: export, verify, list and purge through the admin API.

Talks to the admin API through ``spendgate.cli.http``.

**Anchors.** A database superuser can delete the newest entries and put back an old
chain head; nothing left in the database shows it. What does is an anchor — a signed
``{"seq", "hash", "at", "signature"}`` of a chain position — kept *outside* the
database: ``export -o FILE`` writes one to ``FILE.anchor.json``, ``verify --save-anchor
FILE`` writes the current one, and ``verify --since-anchor FILE`` (or ``--expect-head
SEQ:HASH``) fails unless that entry is still in the chain with the same hash.
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Annotated, NoReturn

import httpx
import typer
from rich.text import Text

from spendgate.cli.http import DEFAULT_URL, JsonOpt, UrlOpt, call, client, fail
from spendgate.cli.output import console, err_console, progress_bar, show

audit_app = typer.Typer(help="The audit log: export, verify, list, purge.", no_args_is_help=True)
StartOpt = Annotated[str | None, typer.Option(help="from this time (ISO 8601, inclusive)")]
EndOpt = Annotated[str | None, typer.Option(help="until this time (ISO 8601, exclusive)")]
ActorOpt = Annotated[str | None, typer.Option(help="actor id, or type:id")]
ActionOpt = Annotated[str | None, typer.Option(help="action, or a prefix like budget.*")]
TargetOpt = Annotated[str | None, typer.Option(help="target id, or type:id")]


def _params(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v}


@audit_app.command("export")
def export(
    format_: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="file (default stdout)")
    ] = None,
    start: StartOpt = None,
    end: EndOpt = None,
    actor: ActorOpt = None,
    action: ActionOpt = None,
    target: TargetOpt = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: Annotated[
        bool, typer.Option("--json", help="with --output: print a JSON summary on stdout")
    ] = False,
) -> None:
    """Stream the audit log to a file (or stdout), with a progress bar on a terminal's
    stderr when the export is not printed on one."""
    if format_ not in ("jsonl", "csv"):
        err_console.print("[red]--format must be jsonl or csv[/]")
        raise typer.Exit(2)
    if as_json and not output:
        err_console.print("[red]--json needs --output: without it the export is stdout[/]")
        raise typer.Exit(2)
    params = _params(
        format=format_, start=start, end=end, actor=actor, action=action, target=target
    )
    copied = _Copied()
    try:
        with ExitStack() as stack:
            http = stack.enter_context(client(url, timeout=None))
            response = stack.enter_context(http.stream("GET", "/admin/audit/export", params=params))
            fail(response)
            sink: IO[bytes] = (
                stack.enter_context(open(output, "wb")) if output else sys.stdout.buffer
            )
            copied.total = int(response.headers.get("x-audit-count", "0"))
            anchor = response.headers.get("x-audit-anchor")
            written = _copy(response, sink, copied, header=format_ == "csv")
    except httpx.HTTPError as exc:
        err_console.print(f"[red]export failed ({url}):[/] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        _interrupted(output, copied)
    anchor_path = f"{output}.anchor.json" if output and anchor else None
    if anchor_path is not None and anchor is not None:
        Path(anchor_path).write_text(anchor + "\n")
    if as_json:
        summary = {"output": output, "format": format_, "entries": written, "anchor": anchor_path}
        sys.stdout.write(json.dumps(summary) + "\n")
    elif output:
        err_console.print(f"{written} entries written to {output}")
        if anchor_path:
            err_console.print(f"anchor (keep it apart from the database): {anchor_path}")


class _Copied:
    """How far an export got: entries written of the ``total`` the gateway announced."""

    def __init__(self) -> None:
        self.entries = 0
        self.total = 0


def _copy(response: httpx.Response, sink: IO[bytes], copied: _Copied, *, header: bool) -> int:
    """Copy the stream to ``sink``, advancing the bar by lines (one per entry)."""
    lines = 0
    with progress_bar(beside=sink) as progress:
        task = progress.add_task("export", total=copied.total)
        for chunk in response.iter_bytes():
            sink.write(chunk)
            lines += chunk.count(b"\n")
            copied.entries = max(0, lines - (1 if header else 0))
            progress.update(task, completed=copied.entries)
    sink.flush()
    return copied.entries


def _interrupted(output: str | None, copied: _Copied) -> NoReturn:
    """Ctrl-C during an export: say so on one line, exit 130; a partial ``-o`` file (it
    has no anchor and would pass for an export of fewer entries) is removed."""
    said = f"export interrupted after {copied.entries} of {copied.total} entries"
    if output is not None and Path(output).is_file():
        Path(output).unlink()
        said += f"; removed the incomplete {output}"
    elif copied.entries or copied.total:
        said += "; the output is incomplete"
    err_console.print(Text(said))
    raise typer.Exit(130)


def _anchor_params(expect_head: str | None, since_anchor: str | None) -> dict[str, str]:
    """The ``expect_*`` query parameters for a kept anchor (exit 2 if unreadable)."""
    if expect_head and since_anchor:
        err_console.print("[red]give --expect-head or --since-anchor, not both[/]")
        raise typer.Exit(2)
    if expect_head:
        seq, sep, digest = expect_head.partition(":")
        if not (sep and seq.isdigit() and len(digest) == 64):
            err_console.print("[red]--expect-head takes SEQ:HASH (the hash: 64 hex digits)[/]")
            raise typer.Exit(2)
        return {"expect_seq": seq, "expect_hash": digest}
    if not since_anchor:
        return {}
    try:
        kept = json.loads(Path(since_anchor).read_text())
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]cannot read the anchor in {since_anchor}:[/] {exc}")
        raise typer.Exit(2) from exc
    try:
        params = {"expect_seq": str(int(kept["seq"])), "expect_hash": str(kept["hash"])}
    except (KeyError, TypeError, ValueError) as exc:
        err_console.print(
            f"[red]{since_anchor} is not an anchor:[/] expected a JSON object with a whole "
            "number seq, hash, at and signature (what audit export -o and verify "
            "--save-anchor write)"
        )
        raise typer.Exit(2) from exc
    if kept.get("at"):
        params["expect_at"] = str(kept["at"])
    if kept.get("signature"):
        params["expect_signature"] = str(kept["signature"])
    return params


@audit_app.command("verify")
def verify(
    expect_head: Annotated[
        str | None, typer.Option(help="SEQ:HASH of an entry that must still be there")
    ] = None,
    since_anchor: Annotated[
        str | None,
        typer.Option(help="an anchor file from an earlier export or verify (--save-anchor)"),
    ] = None,
    save_anchor: Annotated[
        str | None, typer.Option(help="write this verify's anchor to FILE (keep it elsewhere)")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Walk the chain (hashes, MACs, head); exit 1 and name the first bad entry if it
    does not hold, or if a kept anchor's entry is gone or changed."""
    params = _anchor_params(expect_head, since_anchor)
    result = call(url, "GET", "/admin/audit/verify", params=params, timeout=None)
    if save_anchor and result.get("anchor"):
        Path(save_anchor).write_text(json.dumps(result["anchor"]) + "\n")
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    elif result["ok"]:
        since = (
            f" since checkpoint seq {result['checkpoint_seq']}" if result["checkpoint_seq"] else ""
        )
        anchored = " (kept anchor found)" if result.get("anchor_checked") else ""
        console.print(
            f"[green]audit chain intact:[/] {result['checked']} entries{since}, "
            f"head seq {result['last_seq']}{anchored}"
        )
    else:
        console.print(
            f"[red]audit chain broken[/] at entry {result['first_bad_id'] or '-'} "
            f"(seq {result['first_bad_seq']}): {result['reason']}"
        )
    if not result["ok"]:
        raise typer.Exit(1)


@audit_app.command("list")
def list_(
    start: StartOpt = None,
    end: EndOpt = None,
    actor: ActorOpt = None,
    action: ActionOpt = None,
    target: TargetOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    before_seq: Annotated[
        int | None, typer.Option(min=1, help="older than this seq: the next page")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """The newest entries (older ones: --before-seq, as the last line says)."""
    params: dict[str, str | int] = {
        **_params(start=start, end=end, actor=actor, action=action, target=target),
        "limit": limit,
    }
    if before_seq is not None:
        params["before_seq"] = before_seq
    page = call(url, "GET", "/admin/audit", params=params)
    if as_json:
        sys.stdout.write(json.dumps(page["entries"], indent=2) + "\n")
        return
    rows = [
        {
            "seq": e["seq"],
            "at": e["at"],
            "actor": f"{e['actor_type']}:{e['actor_id']}",
            "action": e["action"],
            "target": f"{e['target_type']}:{e['target_id'] or ''}",
            "request_id": e["request_id"],
        }
        for e in page["entries"]
    ]
    show(rows, False, ["seq", "at", "actor", "action", "target", "request_id"])
    if page["next_before_seq"] is not None:
        err_console.print(f"older entries: --before-seq {page['next_before_seq']}")


@audit_app.command("purge")
def purge(
    before: Annotated[str | None, typer.Option(help="ISO 8601; default: now - retention")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Delete entries older than the retention period, leaving a signed checkpoint."""
    result = call(url, "POST", "/admin/audit/purge", json=_params(before=before), timeout=None)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        console.print(
            f"purged {result['purged']} entries"
            + (f"; checkpoint at seq {result['checkpoint_seq']}" if result["checkpoint_id"] else "")
        )
