"""A tiny Dockerfile parser (no Docker engine here): instructions, stages, COPY lines."""

from __future__ import annotations

import posixpath


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; joins `\\` continuations, drops comments."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment inside a continuation
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, "dangling line continuation"
    return out


def stages(instrs) -> list[list[tuple[str, str]]]:
    """The instructions of each FROM stage, in order (global ARGs before the first FROM dropped)."""
    out: list[list[tuple[str, str]]] = []
    for instr, args in instrs:
        if instr == "FROM":
            out.append([])
        elif out:
            out[-1].append((instr, args))
    return out


def copies(stage) -> list[tuple[str, str, str | None]]:
    """(source, absolute destination, --from stage or None) of every COPY in ``stage``; a
    relative destination is taken from the WORKDIR in force (``/`` before any)."""
    workdir, out = "/", []
    for instr, args in stage:
        if instr == "WORKDIR":
            workdir = posixpath.join(workdir, args)
        elif instr == "COPY":
            parts = args.split()
            flags = [p for p in parts if p.startswith("--")]
            *sources, dest = [p for p in parts if not p.startswith("--")]
            origin = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            out += [(src, posixpath.normpath(posixpath.join(workdir, dest)), origin) for src in sources]
    return out
